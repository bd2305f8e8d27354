"""A job's cancel flag.

Two sides of the same fact:
- the front's Python state (`raised`, `reason`, `raised_at`), which decides how
  the job ends;
- while the job runs, a word in shared memory (`worker_orcd.channel.cancel_board`) that
  the engine process's token loop checks before every token and llama.cpp's
  abort callback (C, no GIL) after every graph node, so a cancel can stop a
  decode half-way.
The first raise wins and records why and when; later raises change nothing.
"""

from __future__ import annotations

import threading
import time
from enum import Enum

from worker_orcd.channel import native


class CancelReason(str, Enum):
    CLIENT = "client"  # POST /cancel
    DISCONNECT = "disconnect"  # the SSE client went away
    TIMEOUT = "timeout"  # --inference-timeout-sec elapsed
    SHUTDOWN = "shutdown"  # SIGTERM / POST /shutdown grace period elapsed


class CancelFlag:
    """A job's cancel flag: Python state, and the engine's word while the job runs.

    The word (`bind`) is a slot of the shared cancel board that the engine
    process reads; a queued job has none. A raise before the bind is carried
    over by the bind; after `unbind` (the job ended) a late raise no longer
    touches the word, which the next job may already be using.
    """

    __slots__ = ("_address", "_lock", "raised", "raised_at", "reason")

    def __init__(self) -> None:
        self.raised = False
        self.reason: CancelReason | None = None
        self.raised_at: float | None = None  # time.perf_counter() of the first raise
        self._address = 0
        self._lock = threading.Lock()

    def raise_(self, reason: CancelReason, *, at: float | None = None) -> bool:
        """Raise the flag; True only for the call that raised it.

        `at` is when the cancel was asked for (a perf_counter() reading), if
        earlier than now. The Python side is complete before the native store:
        the engine may report "aborted" the moment the word is up, and whoever
        then decides the job's outcome must already find the flag raised, with
        its reason, or an abort would read as a failure.
        """
        with self._lock:
            if self.raised:
                return False
            self.reason = reason
            self.raised_at = time.perf_counter() if at is None else at
            self.raised = True
            if self._address:
                native.library().orcd_cancel_flag_raise(self._address)
            return True

    def bind(self, address: int) -> None:
        """Make `address` (a cancel board word) this flag's, cleared or raised as the flag is."""
        lib = native.library()
        with self._lock:
            (lib.orcd_cancel_flag_raise if self.raised else lib.orcd_cancel_flag_clear)(address)
            self._address = address

    def unbind(self) -> None:
        with self._lock:
            self._address = 0

    def native_is_raised(self) -> bool:
        """What the engine's abort callback would see; for tests and diagnostics."""
        address = self._address
        return bool(address) and bool(native.library().orcd_cancel_flag_is_raised(address))
