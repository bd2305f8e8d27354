"""A scripted engine for unit tests of the supervisor: the real wire, no model.

Each fake engine is a thread speaking the real protocol (`worker_orcd.channel.frames.Channel`
over a real socket pair) and reading the real cancel board; its "process" is an
object with Popen's few methods, which ends (and closes the engine's end of the
socket) when it is killed or its script says so. Tests decide what each engine
does with a run.
"""

from __future__ import annotations

import ctypes
import itertools
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.frames import Channel
from worker_orcd.channel.messages import (
    Done,
    EngineReady,
    Exit,
    ModelInfo,
    PrefillChunk,
    RunFacts,
    RunRequest,
    Started,
    Stopped,
    Tokenize,
    Tokens,
)
from worker_orcd.config import WorkerConfig
from worker_orcd.supervisor.engine_process import EngineProcess

MODEL = ModelInfo(
    name="fake.gguf",
    path="/fake.gguf",
    size_bytes=1,
    quant_kind="Q4_1",
    tokenizer_kind="bpe",
    vocab_size=100,
    n_ctx_train=4096,
    backend="cpu",
    gpu_layers=0,
)
_pids = itertools.count(4_000_000)


class FakeProc:
    """What the supervisor uses of subprocess.Popen."""

    def __init__(self, engine_fd: int) -> None:
        self.pid = next(_pids)
        self.returncode: int | None = None
        self.signals: list[int] = []
        self._engine_fd = engine_fd  # the engine's Channel owns it; ending only shuts it down
        self._ended = threading.Event()
        self._lock = threading.Lock()

    def end(self, code: int) -> None:
        """The process ends with `code` (negative: by that signal); its socket closes."""
        with self._lock:
            if self.returncode is not None:
                return
            self.returncode = code
        sock = socket.socket(fileno=self._engine_fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # the front reads the end; the engine's recv wakes
        except OSError:
            pass
        finally:
            sock.detach()
        self._ended.set()

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            self.end(-sig)

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired("fake-engine", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode

    @property
    def ended(self) -> bool:
        return self._ended.is_set()


Script = Callable[["FakeEngine", RunRequest], None]
"""What an engine does with a `run` message (the default: `complete`)."""


@dataclass(eq=False)
class FakeEngine:
    number: int
    proc: FakeProc
    channel: Channel
    board: CancelBoard
    script: Script
    ready: bool = True
    dies_on_tokenize: bool = False  # ends, as if killed, on its first tokenize request
    spawned_by: threading.Thread = field(default_factory=threading.current_thread)
    got_exit: threading.Event = field(default_factory=threading.Event)
    runs: list[RunRequest] = field(default_factory=list)

    def serve(self) -> None:
        try:
            self._serve()
        except OSError:  # what it sent after its "process" ended
            pass
        finally:
            self.channel.close()

    def _serve(self) -> None:
        if self.ready:
            self.channel.send(
                EngineReady(
                    pid=self.proc.pid,
                    model=MODEL,
                    prefill_chunk=PrefillChunk(tokens=64, mode="fixed"),
                    flash_attn="auto",
                    context_make_ms=1.0,
                )
            )
        while True:
            try:
                message = self.channel.recv()
            except (EOFError, OSError):
                return
            if self.proc.ended:
                return
            if isinstance(message, Tokenize) and self.dies_on_tokenize:
                self.proc.end(-9)
                return
            if isinstance(message, Tokenize):
                tokens = [[1] * max(1, len(text) // 4) for text, _ in message.texts]
                self.channel.send(Tokens(message.request, tokens))
            elif isinstance(message, RunRequest):
                self.runs.append(message)
                self.script(self, message)
            elif isinstance(message, Exit):
                self.got_exit.set()
                self.proc.end(0)
                return

    # -- pieces of scripts -------------------------------------------------------------

    def word_raised(self, message: RunRequest) -> bool:
        word = ctypes.c_int.from_address(self.board.address(message.slot))
        return word.value != 0

    def started(self, message: RunRequest) -> None:
        self.channel.send(Started(message.run))

    def token(self, message: RunRequest, n: int, text: str = "x") -> None:
        self.channel.send_token(message.run, n, text)

    def stopped(self, message: RunRequest) -> None:
        import time

        self.channel.send(Stopped(message.run, time.perf_counter()))

    def done(self, message: RunRequest, **facts: Any) -> None:
        import time

        self.channel.send(Done(message.run, RunFacts(freed_at=time.perf_counter(), **facts)))


def complete(engine: FakeEngine, message: RunRequest) -> None:
    """Start, two tokens, done with max_tokens."""
    engine.started(message)
    engine.token(message, 1)
    engine.token(message, 2)
    engine.done(message, stop_reason="max_tokens", tokens_out=2, decode_ms=1.0)


class FakeEngines:
    """The supervisor's `spawn`: makes the next fake engine; `scripts[i]` is the i-th's."""

    def __init__(
        self,
        *scripts: Script,
        ready: Callable[[int], bool] = lambda i: True,
        dies_on_tokenize: Callable[[int], bool] = lambda i: False,
    ) -> None:
        self.scripts = list(scripts)
        self.ready = ready
        self.dies_on_tokenize = dies_on_tokenize
        self.engines: list[FakeEngine] = []
        self.hold = threading.Event()  # cleared: the next spawn waits until it is set
        self.hold.set()
        self.holding = threading.Event()  # set while a spawn waits on `hold`
        self._cond = threading.Condition()

    def __call__(self, config: WorkerConfig, board: CancelBoard) -> EngineProcess:
        if not self.hold.is_set():
            self.holding.set()
            self.hold.wait()
        number = len(self.engines)
        front_end, engine_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        engine_fd = engine_end.detach()
        proc = FakeProc(engine_fd)
        script = self.scripts[number] if number < len(self.scripts) else complete
        engine = FakeEngine(number, proc, Channel(engine_fd), board, script, ready=self.ready(number), dies_on_tokenize=self.dies_on_tokenize(number))
        with self._cond:
            self.engines.append(engine)
            self._cond.notify_all()
        threading.Thread(target=engine.serve, name=f"fake-engine-{number}", daemon=True).start()
        return EngineProcess(proc, Channel(front_end.detach()))  # type: ignore[arg-type]

    def wait_for(self, count: int, timeout: float = 10.0) -> FakeEngine:
        """The `count`-th engine (1-based) once it has been made."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.engines) >= count, timeout), f"engine {count} never made"
            return self.engines[count - 1]
