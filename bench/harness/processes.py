"""The servers the benchmark talks to: the worker and the peer, as child processes
(testkit.processes) on free local ports.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from testkit.processes import ChildServer, free_port

CHECKOUT = Path(__file__).resolve().parents[2]  # the directory that holds bench/


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
    # False: a new request waits for the running one (its default stops the running one).
    interrupt_requests: bool = True


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
    cmd += ["--interrupt_requests", str(s.interrupt_requests).lower()]
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
