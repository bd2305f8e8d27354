"""Starting one engine process, with its environment set at spawn.

The engine runs `python -P -m worker_orcd.engine`: `-P` keeps the working
directory off `sys.path` (a stray `uvicorn.py` there cannot shadow the real
one), and the interpreter is this one. Its environment carries the glibc
tunables that make freeing a context real and cheap (glibc reads them only at
process start): a fixed mmap threshold, so freed KV caches return to the
system, and transparent huge pages, so making and freeing one is several
times faster. It inherits two descriptors: its end of the channel and the
cancel board.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from worker_orcd.cancel_board import CancelBoard
from worker_orcd.config import WorkerConfig
from worker_orcd.wire import Channel

TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=131072"


def engine_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
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
    def start(cls, config: WorkerConfig, board: CancelBoard) -> "EngineProcess":
        front_end, engine_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            cmd = [
                sys.executable,
                "-P",
                "-m",
                "worker_orcd.engine",
                "--channel-fd",
                str(engine_end.fileno()),
                "--board-fd",
                str(board.fd),
                "--board-slots",
                str(board.slots),
                "--model",
                str(config.model_path),
                "--n-ctx",
                str(config.n_ctx),
                "--prefill-chunk",
                str(config.prefill_chunk),
                "--threads",
                str(config.threads),
                "--cpu-extra-buffers",
                config.cpu_extra_buffers,
                "--state-dir",
                str(config.state_path),
                "--worker-id",
                config.worker_id,
                "--log-level",
                config.log_level,
            ]
            if config.gpu_device is not None:
                cmd += ["--gpu-device", str(config.gpu_device)]
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                pass_fds=(engine_end.fileno(), board.fd),
                env=engine_environment(),
            )
        finally:
            engine_end.close()
        return cls(proc, Channel(front_end.detach()))

    def kill(self) -> None:
        """SIGKILL, and wait: once this returns the OS (and the GPU driver) has its memory back."""
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
