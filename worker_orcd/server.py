"""Running the worker under uvicorn on an already bound socket, and stopping it cleanly."""

from __future__ import annotations

import socket

import uvicorn

from worker_orcd.app import create_app
from worker_orcd.config import WorkerConfig
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.log import log_event
from worker_orcd.worker import Worker


def run(config: WorkerConfig, sock: socket.socket) -> int:
    worker = Worker(config)
    worker.start()
    info = worker.model.info
    log_event(
        "worker_ready",
        host=config.host,
        port=config.port,
        model=info.name,
        backend=info.backend,
        n_ctx=config.n_ctx,
        threads=config.threads,
        context_make_ms=worker.pool.last_make_ms,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(worker),
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        stop(worker)
    return 0


def stop(worker: Worker) -> None:
    """End every job with a terminal event, then free the contexts and the model."""
    worker.accepting = False
    worker.manager.end_queued(CancelReason.SHUTDOWN)
    active = worker.loop.active
    if active is not None:
        worker.manager.cancel_job(active, CancelReason.SHUTDOWN)
    worker.loop.join(timeout=10)
    worker.close()
    log_event("worker_stopped")
