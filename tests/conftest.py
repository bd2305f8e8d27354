from __future__ import annotations

import pytest

from tests.support import WorkerProcess


@pytest.fixture(scope="session")
def worker():
    """One real worker on the real SmolLM2 model, shared by tests that need no special flags."""
    w = WorkerProcess(args=["--max-queue", "8"]).start()
    yield w
    w.stop()


@pytest.fixture
def client(worker):
    with worker.client() as c:
        yield c
