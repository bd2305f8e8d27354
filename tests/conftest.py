from __future__ import annotations

import pytest

from testkit.worker import WorkerProcess


@pytest.fixture(scope="session")
def shared_worker():
    """One real worker per set of flags, shared by every test in the session that asks for
    those flags: for tests that need no fresh worker (no counts, ledger, queue state,
    shutdown, faults or restarts of their own), so the model loads once per flag set.
    Call it with the worker's flags; a worker that died meanwhile is started again."""
    started: dict[tuple[str, ...], WorkerProcess] = {}

    def get(*args: str) -> WorkerProcess:
        w = started.get(args)
        if w is None or w.proc is None or w.proc.poll() is not None:
            w = started[args] = WorkerProcess(args=list(args)).start()
        return w

    yield get
    for w in started.values():
        if w.proc is not None and w.proc.poll() is None:
            w.stop()


@pytest.fixture(scope="session")
def worker(shared_worker):
    """One real worker on the real SmolLM2 model, shared by tests that need no special flags.

    One inference thread: on a small machine shared with other work, llama.cpp's
    threads wait for each other at every graph node and a busy core stalls them
    all, so two threads are several times slower and far less steady than one.
    """
    return shared_worker("--max-queue", "8", "--threads", "1")


@pytest.fixture
def client(worker):
    with worker.client() as c:
        yield c
