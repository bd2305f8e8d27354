"""Running the worker under uvicorn on an already bound socket, and stopping it cleanly.

SIGTERM, SIGINT and POST /shutdown all start the same drain (Worker.drain):
new jobs get 503, queued jobs end with WORKER_SHUTDOWN, the running job gets
the grace period and is then cancelled. Only when every job has sent its
terminal event is uvicorn told to exit; a second signal exits at once.
"""

from __future__ import annotations

import socket
import sys

import uvicorn
from sse_starlette.sse import AppStatus

from worker_orcd.app import create_app
from worker_orcd.config import WorkerConfig
from worker_orcd.engine.faults import FaultPlan
from worker_orcd.log import log_event
from worker_orcd.worker import ShutdownOnce, Worker

GIL_SWITCH_SEC = 0.0005  # longest a thread waits for the GIL while another runs Python


class WorkerServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, worker: Worker) -> None:
        super().__init__(config)
        self.drain = ShutdownOnce(worker, then=self._exit_when_drained)

    def handle_exit(self, sig: int, frame: object) -> None:
        if self.drain.started:  # a second signal: do not wait any longer
            self.force_exit = True
            self.should_exit = True
            return
        log_event("shutdown_requested", signal=sig)
        self.drain()

    def _exit_when_drained(self) -> None:
        self.should_exit = True


def run(config: WorkerConfig, sock: socket.socket) -> int:
    # Streams end on their own after their terminal event; sse-starlette must not
    # cut them when uvicorn starts to exit.
    AppStatus.disable_automatic_graceful_drain()
    # A thread back from llama.cpp waits for the GIL until the holder lets go; the
    # default 5 ms would show in stop_ms whenever a cancel request holds it.
    sys.setswitchinterval(GIL_SWITCH_SEC)
    worker = Worker(config, faults=FaultPlan.from_env())
    if worker.ledger.recovered:
        log_event("ledger_recovered", jobs_marked_restarted=worker.ledger.recovered)
    worker.start()
    server = WorkerServer(
        uvicorn.Config(
            create_app(worker),
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        ),
        worker,
    )
    worker.request_shutdown = server.drain
    info = worker.model.info
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
        context_make_ms=worker.pool.last_make_ms,
        ledger=str(config.ledger_path),
        cpu_extra_buffers=worker.cpu_extra_buffers.health(),
    )
    try:
        server.run(sockets=[sock])
    finally:
        if server.force_exit or not server.drain.started:
            # A second signal, or uvicorn stopped on its own: end every job now.
            worker.drain(0.0)
        else:
            worker.loop.join(timeout=30)
        worker.close()
        log_event("worker_stopped")
    return 0
