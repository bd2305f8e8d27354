"""Every job the worker knows in memory: waiting, running and recently finished."""

from __future__ import annotations

import threading
from collections import OrderedDict

from worker_orcd.jobs.job import Job


class JobExists(Exception):
    pass


JobKey = tuple[str, str]  # (tenant, job_id): ids are scoped per tenant


class JobRegistry:
    """(tenant, id) → Job. Finished jobs are kept up to `keep_finished`, oldest
    dropped first; the ledger remembers them beyond that."""

    def __init__(self, keep_finished: int = 256) -> None:
        self._jobs: OrderedDict[JobKey, Job] = OrderedDict()
        self._keep_finished = keep_finished
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            key = (job.tenant, job.job_id)
            if key in self._jobs:
                raise JobExists(job.job_id)
            self._jobs[key] = job
            self._evict()

    def get(self, tenant: str, job_id: str) -> Job | None:
        return self._jobs.get((tenant, job_id))

    def owned_by_other(self, tenant: str, job_id: str) -> bool:
        """Whether another tenant has a job with this id in memory (for audit logs only)."""
        with self._lock:
            return any(t != tenant and i == job_id for t, i in self._jobs)

    def discard(self, job: Job) -> None:
        key = (job.tenant, job.job_id)
        with self._lock:
            if self._jobs.get(key) is job:
                del self._jobs[key]

    def _evict(self) -> None:
        if len(self._jobs) <= self._keep_finished:
            return
        finished = [j for j in self._jobs.values() if j.state.terminal]
        for job in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._jobs[(job.tenant, job.job_id)]
