"""The bounded FIFO of jobs waiting for the inference thread."""

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
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._idle_takers = 0

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise QueueClosed
            if len(self._jobs) >= self.capacity + self._idle_takers:
                raise QueueFull
            self._jobs.append(job)
            self._cond.notify()

    def take(self) -> Job | None:
        """The oldest waiting job; blocks while empty; None once closed and empty."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._idle_takers += 1
                try:
                    self._cond.wait()
                finally:
                    self._idle_takers -= 1
            return self._jobs.popleft()

    def remove(self, job: Job) -> bool:
        """Take a cancelled job out of line so it stops counting against capacity."""
        with self._cond:
            try:
                self._jobs.remove(job)
            except ValueError:
                return False
            return True

    def close(self) -> list[Job]:
        """Refuse new jobs and hand back those still waiting; `take` then returns None."""
        with self._cond:
            self._closed = True
            left = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
            return left

    def __len__(self) -> int:
        return len(self._jobs)
