"""Starting one engine process, with its environment set at spawn.

The engine runs `python -P -m worker_orcd.engine`: `-P` keeps the working
directory off `sys.path` (a stray `uvicorn.py` there cannot shadow the real
one), and the interpreter is this one. Its environment carries the glibc
tunables that make freeing a context real and cheap (glibc reads them only at
process start): a fixed mmap threshold, so freed KV caches return to the
system, and transparent huge pages, so making and freeing one is several
times faster. It inherits three descriptors, its only arguments: its end of
the channel, the cancel board and the worker's log stream, where it writes its
JSON log lines. Its settings (worker_orcd.settings.engine) are the channel's
first frame.
Whatever else it writes to its standard error (a C library's abort message,
a backtrace, a Python traceback) comes to the front through a pipe and is
logged as `engine_output` lines, so the log stays JSON.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.frames import Channel
from worker_orcd.config import WorkerConfig
from worker_orcd.log import log_event
from worker_orcd.settings import engine

TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=131072"


def engine_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    # ggml's abort otherwise attaches gdb to the dying engine for a backtrace: seconds
    # (more for a large model) before the process ends, its job's event is sent and its
    # memory is back. Any value the worker's environment gives is kept.
    env.setdefault("GGML_NO_BACKTRACE", "1")
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        existing = env.get("GLIBC_TUNABLES")
        env["GLIBC_TUNABLES"] = f"{existing}:{TUNABLES}" if existing else TUNABLES
    return env


@dataclass
class EngineProcess:
    proc: subprocess.Popen
    channel: Channel
    killed: bool = False  # by the front (a forced cancel, shutdown): not a crash

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, config: WorkerConfig, board: CancelBoard) -> EngineProcess:
        front_end, engine_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        channel = Channel(front_end.detach())
        log_fd = os.dup(_log_stream_fd())
        try:
            # Its settings, the first frame: in the socket before the engine exists to read it.
            channel.send_frame(engine.encode(engine.engine_settings(config, board.slots)))
            cmd = [
                sys.executable,
                "-P",
                "-m",
                "worker_orcd.engine",
                "--channel-fd",
                str(engine_end.fileno()),
                "--board-fd",
                str(board.fd),
                "--log-fd",
                str(log_fd),
            ]
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(engine_end.fileno(), board.fd, log_fd),
                env=engine_environment(),
            )
        except BaseException:
            channel.close()
            raise
        finally:
            engine_end.close()
            os.close(log_fd)
        threading.Thread(target=_log_output, args=(proc,), name="engine-output", daemon=True).start()
        return cls(proc, channel)

    def kill(self, *, failure: bool = False) -> None:
        """SIGKILL, and wait: once this returns the OS (and the GPU driver) has its memory back.

        `failure`: the engine is killed because it failed (its start timed out, its channel
        broke), which counts against it as a death would; otherwise the front chose to end it.
        """
        if not failure:
            self.killed = True
        try:
            self.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def how_it_ended(self) -> str:
        code = self.proc.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"


def _log_stream_fd() -> int:
    """The descriptor under the front's log stream (standard error, maybe replaced)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is both
        return 2


def _log_output(proc: subprocess.Popen) -> None:
    """Until the engine's standard error closes: each line it wrote there, as a log line."""
    assert proc.stderr is not None
    with proc.stderr:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                log_event("engine_output", logging.WARNING, pid=proc.pid, line=line)
