from __future__ import annotations

import pytest

from testkit.worker import WorkerProcess


@pytest.fixture(scope="session")
def worker():
    """One real worker on the real SmolLM2 model, shared by tests that need no special flags.

    One inference thread: on a small machine shared with other work, llama.cpp's
    threads wait for each other at every graph node and a busy core stalls them
    all, so two threads are several times slower and far less steady than one.
    """
    w = WorkerProcess(args=["--max-queue", "8", "--threads", "1"]).start()
    yield w
    w.stop()


@pytest.fixture
def client(worker):
    with worker.client() as c:
        yield c
