from __future__ import annotations

import pytest

from tests.e2e.helpers import wait_idle


@pytest.fixture
def worker_idle(worker):
    """The shared worker is idle before and after the test, so one test's jobs
    never queue behind another's."""
    with worker.client() as c:
        wait_idle(c)
    yield
    with worker.client() as c:
        wait_idle(c)
