"""The bounded queue of jobs waiting for the engine (taken by the dispatcher).

Tenants are served in turn: each tenant with waiting jobs has its own FIFO, and
`take` goes round the tenants, one job each, so a tenant that queues many jobs
delays another tenant's next job by at most one of its own. With one tenant (a
worker without keys) this is a plain FIFO.
"""

from __future__ import annotations

import threading
from collections import deque

from worker_orcd.jobs.job import Job


class QueueFull(Exception):
    pass


class QueueClosed(Exception):
    pass


class JobQueue:
    """`capacity` jobs may wait; a job that an idle taker will pick up at once
    does not wait, so it does not count (capacity 0 still runs one job at a time)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lines: dict[str, deque[Job]] = {}  # tenant → its waiting jobs, oldest first
        self._turns: deque[str] = deque()  # tenants with waiting jobs, next to be served first
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False
        self._idle_takers = 0

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise QueueClosed
            if self._size >= self.capacity + self._idle_takers:
                raise QueueFull
            line = self._lines.get(job.tenant)
            if line is None:
                # A tenant without waiting jobs joins the round at its end.
                line = self._lines[job.tenant] = deque()
                self._turns.append(job.tenant)
            line.append(job)
            self._size += 1
            self._cond.notify()

    def take(self) -> Job | None:
        """The next job in turn; blocks while empty; None once closed and empty."""
        with self._cond:
            while not self._size:
                if self._closed:
                    return None
                self._idle_takers += 1
                try:
                    self._cond.wait()
                finally:
                    self._idle_takers -= 1
            return self._pop_next()

    def remove(self, job: Job) -> bool:
        """Take a cancelled job out of line so it stops counting against capacity."""
        with self._cond:
            line = self._lines.get(job.tenant)
            if line is None or job not in line:
                return False
            line.remove(job)
            self._size -= 1
            if not line:
                self._drop(job.tenant)
            return True

    def position(self, job: Job) -> int | None:
        """How many waiting jobs `take` hands out before this one (None: not waiting)."""
        with self._cond:
            line = self._lines.get(job.tenant)
            if line is None or job not in line:
                return None
            k = line.index(job)
            ahead = 0
            before = True  # tenants before this one in the round get k + 1 turns first
            for tenant in self._turns:
                if tenant == job.tenant:
                    before = False
                    continue
                ahead += min(len(self._lines[tenant]), k + 1 if before else k)
            return ahead + k

    def has_room(self) -> bool:
        """Whether a `put` now would be accepted."""
        with self._cond:
            return not self._closed and self._size < self.capacity + self._idle_takers

    def drain(self) -> list[Job]:
        """Hand back every waiting job, in turn order, leaving the queue open."""
        with self._cond:
            left = []
            while self._size:
                left.append(self._pop_next())
            return left

    def close(self) -> list[Job]:
        """Refuse new jobs and hand back those still waiting, in turn order; `take`
        then returns None."""
        with self._cond:  # a Condition's lock is reentrant: drain() under the same hold
            self._closed = True
            self._cond.notify_all()
            return self.drain()

    def __len__(self) -> int:
        return self._size

    def _pop_next(self) -> Job:
        tenant = self._turns.popleft()
        line = self._lines[tenant]
        job = line.popleft()
        self._size -= 1
        if line:
            self._turns.append(tenant)  # served: back to the end of the round
        else:
            del self._lines[tenant]
        return job

    def _drop(self, tenant: str) -> None:
        del self._lines[tenant]
        self._turns.remove(tenant)
