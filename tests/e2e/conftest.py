from __future__ import annotations

import pytest

from testkit.streams import wait_idle
from testkit.worker import WorkerProcess


@pytest.fixture
def worker_idle(worker):
    """The shared worker is idle before and after the test, so one test's jobs
    never queue behind another's."""
    with worker.client() as c:
        wait_idle(c)
    yield
    with worker.client() as c:
        wait_idle(c)


@pytest.fixture
def own_worker():
    """Workers of a test's own (at 1 thread), which it may kill, hang and restart; each
    still running is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, state_dir=None) -> WorkerProcess:
        w = WorkerProcess(args=["--threads", "1", *args], env=env or {}, state_dir=state_dir).start()
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.stop()
