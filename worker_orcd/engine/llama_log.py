"""llama.cpp's and ggml's own log lines, into the worker's JSON log.

A CUDA error's text, a failed allocation or the reason a model would not load
reach the worker only as these lines, so warnings and errors are always kept
(as `llama_log` events at their level); the chatter of a model load (info,
debug) is kept only at --log-level debug. llama.cpp may send a line in pieces
(progress dots, GGML_LOG_LEVEL_CONT): a line is logged once it is complete.
"""

from __future__ import annotations

import logging
import threading

import llama_cpp

from worker_orcd.log import log_event

# enum ggml_log_level
_NONE, _DEBUG, _INFO, _WARN, _ERROR, _CONT = 0, 1, 2, 3, 4, 5
_LEVELS = {_DEBUG: logging.DEBUG, _INFO: logging.DEBUG, _WARN: logging.WARNING, _ERROR: logging.ERROR}


class LlamaLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = ""
        self._level = logging.DEBUG
        self._errors: list[str] = []  # the newest error lines: a failure's reasons
        self.error_count = 0
        # Kept on the instance: llama.cpp holds only the C pointer to it.
        self.callback = llama_cpp.llama_log_callback(self._on_text)

    def _on_text(self, level: int, text: bytes | None, user_data: object) -> None:
        piece = (text or b"").decode("utf-8", "replace")
        with self._lock:
            if level != _CONT:
                if self._pending:  # a new line begins: what was pending is whole
                    self._emit(self._pending)
                    self._pending = ""
                self._level = _LEVELS.get(level, logging.DEBUG)
            self._pending += piece
            if "\n" in self._pending:
                *lines, self._pending = self._pending.split("\n")
                for line in lines:
                    self._emit(line)

    def _emit(self, line: str) -> None:
        line = line.rstrip()
        if line.strip(" ."):  # not an empty line or a row of progress dots
            if self._level == logging.ERROR:
                self._errors = [*self._errors[-7:], line]
                self.error_count += 1
            log_event("llama_log", self._level, source="llama.cpp", message=line)

    def errors_since(self, count: int) -> list[str]:
        """The error lines logged after `error_count` was `count` (the newest eight at most)."""
        with self._lock:
            new = self.error_count - count
            return self._errors[-new:] if new > 0 else []


_installed: LlamaLog | None = None


def errors_during(count: int) -> str:
    """The first thing llama.cpp said went wrong since `error_count()` was `count` (the
    cause; what follows it is usually its consequences, which the log keeps)."""
    errors = _installed.errors_since(count) if _installed is not None else []
    return errors[0] if errors else ""


def error_count() -> int:
    return _installed.error_count if _installed is not None else 0


def install() -> LlamaLog:
    """Route llama.cpp's (and so ggml's) log through the JSON log, once per process."""
    global _installed
    if _installed is None:
        _installed = LlamaLog()
        llama_cpp.llama_log_set(_installed.callback, None)
    return _installed
