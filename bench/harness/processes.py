"""Starting and stopping the servers the benchmark talks to: the worker and the peer.

Both run as child processes on free local ports; their logs go to files in a
scratch directory (a pipe nobody reads would block them).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CHECKOUT = Path(__file__).resolve().parents[2]  # the directory that holds bench/


class ServerFailed(RuntimeError):
    """A server exited or did not become ready; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ChildServer:
    """A server child process, ready once `ready_path` answers 200."""

    name: str
    cmd: list[str]
    port: int
    ready_path: str
    scratch: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.scratch / f"{self.name}.log"

    def start(self, timeout: float = 120.0) -> "ChildServer":
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise ServerFailed(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.get(self.url + self.ready_path).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerFailed(f"{self.name} not ready within {timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _die_with_parent() -> None:
    """In the child: a benchmark killed outright must not leave its servers running."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="worker-orcd-bench-"))


def worker_server(
    model: Path | None, worker_args: list[str], scratch: Path, *, worker_id: str = "bench-worker"
) -> ChildServer:
    """`worker-orcd serve` with the user's worker flags, on a free port, its ledger in `scratch`."""
    port = free_port()
    cmd = [sys.executable, "-m", "worker_orcd", "serve", "--port", str(port)]
    cmd += ["--state-dir", str(scratch / "state"), "--worker-id", worker_id]
    if model is not None:
        cmd += ["--model", str(model)]
    cmd += worker_args
    return ChildServer("worker", cmd, port, "/health", scratch)


@dataclass(frozen=True)
class PeerSettings:
    """llama-cpp-python's server, configured like the worker."""

    model: Path
    n_ctx: int
    n_threads: int
    n_batch: int
    gpu_layers: int  # -1: all, as the worker does on a GPU
    gpu_device: int
    extra_buffers: bool = True  # the worker's extra-CPU-buffers setting


def peer_server(settings: PeerSettings, scratch: Path) -> ChildServer:
    port = free_port()
    s = settings
    # Through a launcher: the server has no flag for the extra CPU buffer types.
    cmd = [sys.executable, "-m", "bench.harness.peer_launch"]
    cmd += ["--cpu-extra-buffers", "on" if s.extra_buffers else "off"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--model", str(s.model), "--n_ctx", str(s.n_ctx)]
    cmd += ["--n_threads", str(s.n_threads), "--n_threads_batch", str(s.n_threads)]
    cmd += ["--n_batch", str(s.n_batch), "--n_ubatch", str(s.n_batch)]
    # Its default computes logits for every prompt token; the worker computes only the last.
    cmd += ["--logits_all", "false"]
    cmd += ["--n_gpu_layers", str(s.gpu_layers), "--main_gpu", str(s.gpu_device)]
    # The launcher is in this checkout, which the child finds only if told: the
    # benchmark may have been started from another directory (the checkout on PYTHONPATH).
    path = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH")) if p)
    return ChildServer("peer", cmd, port, "/v1/models", scratch, env={"PYTHONPATH": path})


def peer_available() -> bool:
    """Whether llama-cpp-python's server extra (`worker-orcd[peer]`) is installed."""
    try:
        import fastapi  # noqa: F401
        import pydantic_settings  # noqa: F401
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
    except ImportError:
        return False
    return True
