"""Accepting, cancelling and finding jobs: what the HTTP routes ask of the worker.

Cancel is idempotent and never waits: it raises the job's flag and returns. A
job still in the queue is ended here at once (it never runs); a running job is
ended by the dispatcher once the engine has seen the flag. A cancel for an id not yet
known is kept for a while (`EarlyCancels`): the job, if it comes, ends at once.
A tenant may hold at most `max_jobs_per_tenant` queued and running jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.early_cancels import EarlyCancels
from worker_orcd.jobs.job import Job, Phase, now_iso
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobExists, JobRegistry

JobListener = Callable[[Job], None]


class TenantBusy(Exception):
    """The tenant already has its share of queued and running jobs."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class JobManager:
    def __init__(
        self,
        queue: JobQueue,
        registry: JobRegistry,
        *,
        early_cancels: EarlyCancels | None = None,
        max_jobs_per_tenant: int | None = None,
    ) -> None:
        self.queue = queue
        self.registry = registry
        self.early_cancels = early_cancels if early_cancels is not None else EarlyCancels()
        self.max_jobs_per_tenant = max_jobs_per_tenant or None  # 0: no limit
        self._open: set[Job] = set()  # queued + running, counted against their tenant
        # One lock for "is this id known?" and "remember the cancel / register the
        # job", so a cancel and its execute cannot both miss each other.
        self._lock = threading.Lock()
        self._listeners: list[JobListener] = []
        self._finish_listeners: list[JobListener] = []

    def add_listener(self, listener: JobListener) -> None:
        """Called with the job after each change of state or cancel request."""
        self._listeners.append(listener)

    def add_finish_listener(self, listener: JobListener) -> None:
        """Called exactly once per job, after its terminal event."""
        self._finish_listeners.append(listener)

    def submit(self, job: Job) -> None:
        """Queue a job, or end it at once if its cancel came first.

        Raises JobExists, TenantBusy, QueueFull or QueueClosed; nothing is kept then.
        """
        job.on_change = self._job_changed
        job.on_finish = self._job_finished
        with self._lock:
            early = self.early_cancels.take(job.tenant, job.job_id)
            if early is not None:
                # Registered (its id is taken, GET /jobs finds it) but never queued:
                # it holds no queue place and no share of the tenant's limit.
                self.registry.add(job)
            else:
                limit = self.max_jobs_per_tenant
                if limit is not None and self._count_open(job.tenant) >= limit:
                    raise TenantBusy(limit)
                self.registry.add(job)
                try:
                    self.queue.put(job)
                except Exception:
                    self.registry.discard(job)
                    raise
                self._open.add(job)
        self._job_changed(job)
        if early is not None:
            job.request_cancel(early.reason, requested_at=early.requested_at, raised_at=early.raised_at)
            job.finish_cancelled_unstarted()

    def cancel(self, tenant: str, job_id: str, reason: CancelReason) -> Phase | None:
        """Ask a job to stop. Returns the phase the cancel hit, None for an unknown
        job, whose cancel is then kept for an execute that may still come."""
        with self._lock:
            job = self.find(tenant, job_id)
            if job is None:
                self.early_cancels.remember(tenant, job_id, reason, now_iso())
                return None
        return self.cancel_job(job, reason)

    def open_jobs(self, tenant: str) -> int:
        """The tenant's queued and running jobs."""
        with self._lock:
            return self._count_open(tenant)

    def _count_open(self, tenant: str) -> int:
        return sum(1 for job in self._open if job.tenant == tenant)

    def cancel_job(self, job: Job, reason: CancelReason) -> Phase:
        phase = job.request_cancel(reason)
        if phase is Phase.QUEUED and job.finish_cancelled_unstarted():
            self.queue.remove(job)
        return phase

    def find(self, tenant: str, job_id: str) -> Job | None:
        """The tenant's job, if it is still in memory."""
        return self.registry.get(tenant, job_id)

    def end_queued(self, reason: CancelReason) -> list[Job]:
        """Close the queue and end every job still waiting in it (shutdown)."""
        left = self.queue.close()
        for job in left:
            job.request_cancel(reason)
            job.finish_cancelled_unstarted()
        return left

    def _job_changed(self, job: Job) -> None:
        for listener in self._listeners:
            listener(job)

    def _job_finished(self, job: Job) -> None:
        with self._lock:
            self._open.discard(job)
        for listener in self._finish_listeners:
            listener(job)


__all__ = ["JobExists", "JobManager", "TenantBusy"]
