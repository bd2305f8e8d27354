"""The Worker deployment's request router: Serve's power of two choices, plus one duty.

Serve builds one instance in every process that holds a handle to the Worker
deployment (the routers), and tells it, through `update_replicas`, which
replicas it may route to. A replica that leaves that set is being removed
(scale-down, a new version, a failed health check) or has died: Serve no longer
sends it new jobs, but its running and queued jobs are still there, with
streams open and cancels to come. This router reports each change of the set to
the job directory, which tells a replica that left it to drain (see
`WorkerReplica._drain`); Serve has no hook that tells the replica itself.
"""

from __future__ import annotations

import logging
import random
import uuid
from concurrent.futures import ThreadPoolExecutor

from ray.serve.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)

logger = logging.getLogger("ray.serve")


class DrainAwareRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    def initialize_state(self, app_name: str = "worker-orcd", cancel_mark_sec: float = 60.0, **_: object) -> None:
        self._wo_app = app_name
        self._wo_cancel_mark_sec = cancel_mark_sec
        self._wo_reporter = uuid.uuid4().hex
        self._wo_directory = None
        # Reports leave the routing loop at once and reach the directory in order.
        self._wo_reports = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-orcd-routing")

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Two random replicas (same node first); Serve takes the one with the shorter queue."""
        ids = list(self.apply_locality_routing(pending_request=pending_request))
        if not ids:
            return []
        chosen = random.sample(ids, min(2, len(ids)))
        replicas = self.curr_replicas
        return [[replicas[i] for i in chosen if i in replicas]]

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        ids = [r.replica_id.unique_id for r in replicas]
        if hasattr(self, "_wo_reports"):
            self._wo_reports.submit(self._report, ids)

    def _report(self, ids: list[str]) -> None:
        from worker_orcd.serve_ray.cluster import get_directory

        try:
            if self._wo_directory is None:
                self._wo_directory = get_directory(self._wo_app, self._wo_cancel_mark_sec)
            self._wo_directory.running.remote(self._wo_reporter, ids)  # type: ignore[attr-defined]  # set just above
        except Exception:  # the directory restarts empty; the next change reports again
            logger.warning("worker-orcd: could not report the running replicas", exc_info=True)
            self._wo_directory = None
