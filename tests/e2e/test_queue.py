"""One job at a time, the rest in a bounded FIFO (WO-JOB-4, WO-JOB-5)."""

from __future__ import annotations

import pytest

from testkit.streams import StreamThread, assert_error, assert_well_formed, cancel, job_of, terminal, uid, wait_idle
from testkit.waiting import wait_until
from testkit.wire import execute
from testkit.worker import WorkerProcess
from tests.e2e.helpers import queue_in_order, start_blocker

pytestmark = pytest.mark.usefixtures("worker_idle")


def test_jobs_run_in_order(client, worker):
    blocker = start_blocker(worker, client)
    blocker_id = blocker.job_id
    ids = [uid(f"fifo{n}") for n in range(3)]
    streams = []
    for n, job_id in enumerate(ids):
        body = {"job_id": job_id, "prompt": "Hi", "max_tokens": 3, "temperature": 0}
        streams.append(StreamThread(worker, body).start())
        worker.log.wait_for("job_queued", job_id=job_id)  # queued strictly one after another
        wait_until(lambda: client.get("/health").json()["queue_depth"] == n + 1)
    for s in streams:
        # Waiting jobs have an open stream and nothing on it yet.
        assert s.opened.wait(10) and s.status == 200
        assert s.events == []
    for job_id in ids:
        assert job_of(client, job_id)["state"] == "queued"

    cancel(client, blocker_id)
    assert terminal(blocker.join()).data["code"] == "CANCELLED"
    jobs = []
    for s in streams:
        events = s.join()
        assert_well_formed(events)  # `started` first: it ran
        assert terminal(events).name == "end"
        jobs.append(job_of(client, s.job_id))

    # One at a time, in the order they came: each starts after the previous ended.
    blocker_job = job_of(client, blocker_id)
    assert blocker_job["ended_at"] <= jobs[0]["started_at"]
    for prev, nxt in zip(jobs, jobs[1:]):
        assert prev["started_at"] <= prev["ended_at"] <= nxt["started_at"]
    assert jobs[0]["queued_at"] <= jobs[1]["queued_at"] <= jobs[2]["queued_at"]


def test_a_queued_job_knows_its_place(client, worker):
    """WO-JOBS-5: `queue_position` while queued (0: next), gone once the job runs."""
    blocker = start_blocker(worker, client)
    blocker_id = blocker.job_id
    ids = [uid(f"place{n}") for n in range(2)]
    streams = queue_in_order(worker, [{"job_id": job_id, "prompt": "Hi", "max_tokens": 2} for job_id in ids])
    assert [job_of(client, job_id)["queue_position"] for job_id in ids] == [0, 1]
    assert "queue_position" not in job_of(client, blocker_id)  # running
    cancel(client, ids[0])
    assert terminal(streams[0].join()).data["code"] == "CANCELLED"
    assert job_of(client, ids[1])["queue_position"] == 0  # the one ahead has gone
    cancel(client, blocker_id)
    assert terminal(blocker.join()).data["code"] == "CANCELLED"
    assert terminal(streams[1].join()).name == "end"
    assert "queue_position" not in job_of(client, ids[1])


@pytest.fixture
def small_queue_worker():
    w = WorkerProcess(args=["--max-queue", "1", "--threads", "1"]).start()
    yield w
    w.stop()


def test_full_queue_is_503(small_queue_worker):
    w = small_queue_worker
    with w.client() as c:
        running = start_blocker(w, c)
        running_id, waiting_id, refused_id = running.job_id, uid("waiting"), uid("refused")
        waiting = StreamThread(w, {"job_id": waiting_id, "prompt": "Hi", "max_tokens": 2}).start()
        wait_until(lambda: c.get("/health").json()["queue_depth"] == 1)

        r = c.post("/execute", json={"job_id": refused_id, "prompt": "Hi", "max_tokens": 2})
        err = assert_error(r, 503, "WORKER_BUSY")
        assert int(r.headers["Retry-After"]) >= 1
        assert err["message"]
        # Nothing was queued: the id is unknown and free, the queue unchanged.
        assert_error(c.get(f"/jobs/{refused_id}"), 404, "JOB_NOT_FOUND")
        assert c.get("/health").json()["queue_depth"] == 1

        cancel(c, waiting_id)
        assert [e.name for e in waiting.join()] == ["error"]
        cancel(c, running_id)
        assert terminal(running.join()).data["code"] == "CANCELLED"
        wait_idle(c)

        # Room again: the refused id can be used now.
        events = execute(c, {"job_id": refused_id, "prompt": "Hi", "max_tokens": 2})
        assert terminal(events).name == "end"
