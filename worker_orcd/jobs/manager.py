"""Accepting, cancelling and finding jobs: what the HTTP routes ask of the worker.

Cancel is idempotent and never waits: it raises the job's flag and returns. A
job still in the queue is ended here at once (it never runs); a running job is
ended by the inference thread, which sees the flag.
"""

from __future__ import annotations

from typing import Callable

from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job, Phase
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobExists, JobRegistry

JobListener = Callable[[Job], None]


class JobManager:
    def __init__(self, queue: JobQueue, registry: JobRegistry) -> None:
        self.queue = queue
        self.registry = registry
        self._listeners: list[JobListener] = []
        self._finish_listeners: list[JobListener] = []

    def add_listener(self, listener: JobListener) -> None:
        """Called with the job after each change of state or cancel request."""
        self._listeners.append(listener)

    def add_finish_listener(self, listener: JobListener) -> None:
        """Called exactly once per job, after its terminal event."""
        self._finish_listeners.append(listener)

    def submit(self, job: Job) -> None:
        """Queue a job. Raises JobExists, QueueFull or QueueClosed; nothing is kept then."""
        job.on_change = self._job_changed
        job.on_finish = self._job_finished
        self.registry.add(job)
        try:
            self.queue.put(job)
        except Exception:
            self.registry.discard(job)
            raise
        self._job_changed(job)

    def cancel(self, tenant: str, job_id: str, reason: CancelReason) -> Phase | None:
        """Ask a job to stop. Returns the phase the cancel hit, None for an unknown job."""
        job = self.find(tenant, job_id)
        if job is None:
            return None
        return self.cancel_job(job, reason)

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
        for listener in self._finish_listeners:
            listener(job)


__all__ = ["JobManager", "JobExists"]
