from __future__ import annotations

import pytest

from testkit.streams import wait_idle
from testkit.worker import WorkerProcess
from tests.e2e.helpers import APP_ORIGIN, KEYED_MAX_QUEUE, TOKENS


@pytest.fixture
def worker_idle(worker):
    """The shared worker is idle before and after the test, so one test's jobs
    never queue behind another's."""
    with worker.client() as c:
        wait_idle(c)
    yield
    with worker.client() as c:
        wait_idle(c)


@pytest.fixture(scope="session")
def keyed_worker(shared_worker, tmp_path_factory):
    """The worker with API keys, shared by the tests of tenants, operators and web pages:
    alice and bob from --api-key flags, carol from --api-keys-file, the operator ops,
    APP_ORIGIN let in, and the default tenant limit (helpers.TOKENS)."""
    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    keys_file.write_text(f"# tenants of the tests\n\ncarol={TOKENS['carol']}\n  # end\n")
    return shared_worker(
        "--threads", "1",
        "--max-queue", str(KEYED_MAX_QUEUE),
        "--api-key", f"alice={TOKENS['alice']}",
        "--api-key", f"bob={TOKENS['bob']}",
        "--api-keys-file", str(keys_file),
        "--admin-key", f"ops={TOKENS['ops']}",
        "--allow-origin", APP_ORIGIN,
    )  # fmt: skip


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
