"""Running the worker under uvicorn on an already bound socket, and stopping it cleanly.

SIGTERM, SIGINT and POST /shutdown all start the same drain (Worker.drain):
new jobs get 503, queued jobs end with WORKER_SHUTDOWN, the running job gets
the grace period and is then cancelled. Only when every job has sent its
terminal event is uvicorn told to exit; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from worker_orcd.app import create_app
from worker_orcd.config import WorkerConfig
from worker_orcd.engine.gguf import ModelLoadError
from worker_orcd.http.protocol import front_options
from worker_orcd.log import log_event
from worker_orcd.supervisor.supervisor import EngineStartFailed
from worker_orcd.worker import ShutdownOnce, Worker

GIL_SWITCH_SEC = 0.0005  # longest a thread waits for the GIL while another runs Python


class WorkerServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, worker: Worker) -> None:
        super().__init__(config)
        self.worker = worker
        self.drain = ShutdownOnce(worker, then=self._exit_when_drained)
        self._signalled = False

    def handle_exit(self, sig: int, frame: object) -> None:
        # A second signal may run this handler inside the first one (handlers run between
        # any two bytecodes of the main thread): the first thing done marks it as seen.
        if self._signalled or self.drain.started:  # a second signal: do not wait any longer
            self.force_exit = True
            self.should_exit = True
            return
        self._signalled = True
        log_event("shutdown_requested", signal=sig)
        self.drain()

    def _exit_when_drained(self) -> None:
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Before uvicorn closes connections and cancels their tasks (a second signal, or an
        # exit of its own): jobs still open end as shut down, not as their streams'
        # disconnects. After a completed drain there are none.
        self.worker.stop_jobs()
        await super().shutdown(sockets)


def run(config: WorkerConfig, sock: socket.socket) -> int:
    # The front's threads (dispatcher, ledger) hand the GIL back to the event loop, which
    # reads the engine's channel, within this much.
    sys.setswitchinterval(GIL_SWITCH_SEC)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(config, sock))


def _loop_factory():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(config: WorkerConfig, sock: socket.socket) -> int:
    """The whole life of the worker on one event loop: it reads the engine's channel from
    the engine's first message to its last, so the start and the drain wait on threads."""
    worker = Worker(config, asyncio.get_running_loop())
    if worker.ledger.recovered:
        log_event("ledger_recovered", jobs_marked_restarted=worker.ledger.recovered)
    try:
        with signals_noted() as stop_requested:  # a SIGTERM during a long model load
            await asyncio.to_thread(worker.start, stop_requested)
    except EngineStartFailed as exc:
        await asyncio.to_thread(worker.close)
        if stop_requested():
            log_event("worker_stopped", during="start")
            return 0
        raise ModelLoadError(str(exc)) from None
    server = WorkerServer(
        uvicorn.Config(
            create_app(worker),
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            **front_options(config),
        ),
        worker,
    )
    worker.request_shutdown = server.drain
    info = worker.model
    if not config.keyed:
        log_event(
            "auth_disabled",
            host=config.host,
            message="no API keys: every client that can reach this address may submit and cancel jobs",
        )
    log_event(
        "worker_ready",
        host=config.host,
        port=config.port,
        model=info.name,
        backend=info.backend,
        n_ctx=config.n_ctx,
        threads=config.threads,
        context_make_ms=worker.engine.info.context_make_ms if worker.engine.info else None,
        ledger=str(config.ledger_path),
        cpu_extra_buffers=worker.engine.info.cpu_extra_buffers if worker.engine.info else None,
        engine_pid=worker.engine.engine_pid,
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        if server.force_exit or not server.drain.started:
            # A second signal, or uvicorn stopped on its own: end every job now.
            await asyncio.to_thread(worker.drain, 0.0)
        else:
            await asyncio.to_thread(worker.engine.join, config.cancel_deadline_ms / 1000.0 + 30)
        await asyncio.to_thread(worker.close)
        log_event("worker_stopped")
    return 0


@contextmanager
def signals_noted() -> Iterator[Callable[[], bool]]:
    """While the engine starts (uvicorn's handlers are not installed yet), SIGTERM and
    SIGINT are noted rather than fatal; the start gives up and the worker exits 0."""
    noted = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: noted.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield noted.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
