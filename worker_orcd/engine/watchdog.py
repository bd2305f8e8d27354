"""Raises a running job's cancel flag when its inference timeout passes.

It raises the same flag a client cancel does, so a timeout stops a decode
half-way and releases memory exactly like a cancel.
"""

from __future__ import annotations

import threading
import time

from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job


class Watchdog:
    def __init__(self, timeout_sec: float) -> None:
        self.timeout_sec = timeout_sec
        self._cond = threading.Condition()
        self._job: Job | None = None
        self._deadline = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def arm(self, job: Job) -> None:
        with self._cond:
            self._job = job
            self._deadline = time.monotonic() + self.timeout_sec
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._job = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                job = self._job
                if job is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._job = None
                job.request_cancel(CancelReason.TIMEOUT)
