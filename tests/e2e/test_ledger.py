"""The ledger seen from outside (WO-JOBS-3, WO-JOBS-4, WO-LEDGER-2, WO-LEDGER-4):
answers after a restart, listing, and crash recovery after SIGKILL."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import httpx
import pytest

from testkit.processes import free_port
from testkit.prompts import CHAT, LONG_ANSWER_PROMPT
from testkit.streams import StreamThread, assert_error, cancel, job_of, terminal, uid
from testkit.waiting import wait_until
from testkit.wire import execute
from testkit.worker import WorkerProcess

ARGS = ["--threads", "1"]
SHORT = CHAT.format("Name three colours.")


def short_job(job_id: str) -> dict:
    return {"job_id": job_id, "prompt": SHORT, "max_tokens": 6, "temperature": 0}


def long_job(job_id: str) -> dict:
    # Greedy decoding of this prompt runs for over a thousand tokens: it only ends when cancelled.
    return {"job_id": job_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 2048, "temperature": 0}


def ledger_rows(state_dir: Path) -> dict[str, dict]:
    """Every row of the worker's ledger file, read through a read-only connection of our own."""
    path = state_dir / "jobs.sqlite3"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return {r["job_id"]: dict(r) for r in conn.execute("SELECT * FROM jobs")}
    finally:
        conn.close()


def run_cancelled(worker: WorkerProcess, job_id: str) -> dict:
    """A long job cancelled after a few tokens; returns its CANCELLED event."""
    stream = StreamThread(worker, long_job(job_id)).start()
    stream.wait_tokens(2)
    with worker.client() as c:
        cancel(c, job_id)
    end = terminal(stream.join())
    assert end.data["code"] == "CANCELLED"
    return end.data


def on_another_port(first: WorkerProcess) -> WorkerProcess:
    """The same worker's next start on the same --state-dir, on another port and with
    the default worker id (which names the port): its history must still be there (WO-LEDGER-5)."""
    port = free_port()
    while port == first.port:
        port = free_port()
    return WorkerProcess(args=ARGS, state_dir=first.state_dir, port=port, worker_id=None)


@pytest.fixture(scope="module")
def history():
    """A worker ran three jobs and was restarted on the same --state-dir, on another port.

    Yields the restarted worker, the job ids in submission order, and what GET /jobs/{id}
    answered before the restart (from memory)."""
    state_dir = Path(tempfile.mkdtemp(prefix="worker-orcd-ledger-"))
    first = WorkerProcess(args=ARGS, state_dir=state_dir).start()
    second = None
    try:
        done_1, cut, done_2 = uid("done"), uid("cut"), uid("done")
        with first.client() as c:
            assert terminal(execute(c, short_job(done_1))).name == "end"
            run_cancelled(first, cut)
            cancel(c, cut)  # a second, late cancel changes nothing
            assert terminal(execute(c, short_job(done_2))).name == "end"
            before = {job_id: job_of(c, job_id) for job_id in (done_1, cut, done_2)}
        assert first.stop() == 0
        second = on_another_port(first).start()
        yield second, [done_1, cut, done_2], before
    finally:
        first.kill()
        if second is not None:
            second.stop()


def test_finished_jobs_answered_from_ledger_after_restart(history):
    worker, ids, before = history
    with worker.client() as c:
        for job_id in ids:
            after = job_of(c, job_id)
            assert after == before[job_id]
    done = before[ids[0]]
    assert done["state"] == "completed" and done["text"] and done["tokens_out"] == 6
    assert done["stop_reason"] == "max_tokens" and done["error"] is None
    # Nothing was left unfinished by a clean stop, so nothing was "recovered".
    assert worker.log.events("ledger_recovered") == []


def test_cancelled_job_stays_cancelled(history):
    worker, ids, before = history
    cut = before[ids[1]]
    assert cut["state"] == "cancelled"
    assert cut["error"]["code"] == "CANCELLED" and cut["error"]["retriable"] is False
    assert cut["cancel_requested"] is True and cut["cancel_reason"] == "client"
    assert cut["tokens_out"] >= 2 and cut["text"]  # the partial text is kept (WO-JOBS-1)
    assert cut["stop_reason"] is None
    with worker.client() as c:
        cancel(c, ids[1])  # and after the restart, from the ledger side
        assert job_of(c, ids[1]) == cut
        completed = [j["job_id"] for j in c.get("/jobs", params={"state": "completed"}).json()["jobs"]]
        cancelled = [j["job_id"] for j in c.get("/jobs", params={"state": "cancelled"}).json()["jobs"]]
    assert ids[1] not in completed and ids[1] in cancelled


def test_job_ids_are_remembered_across_restart(history):
    worker, ids, _ = history
    with worker.client() as c:
        for job_id in ids:
            assert_error(c.post("/execute", json=short_job(job_id)), 409, "JOB_EXISTS")
        assert_error(c.get(f"/jobs/{uid('never')}"), 404, "JOB_NOT_FOUND")


def test_list_jobs(history):
    worker, ids, before = history
    done_1, cut, done_2 = ids
    with worker.client() as c:
        listed = c.get("/jobs").json()["jobs"]
        assert [j["job_id"] for j in listed] == [done_2, cut, done_1]  # newest first
        for j in listed:
            assert "text" not in j
            assert j == {k: v for k, v in before[j["job_id"]].items() if k != "text"}

        def ids_of(**params) -> list[str]:
            r = c.get("/jobs", params=params)
            assert r.status_code == 200, r.text
            return [j["job_id"] for j in r.json()["jobs"]]

        assert ids_of(state="completed") == [done_2, done_1]
        assert ids_of(state="cancelled") == [cut]
        assert ids_of(state="failed") == ids_of(state="running") == ids_of(state="queued") == []
        assert ids_of(limit=1) == [done_2]
        assert ids_of(limit=2) == [done_2, cut]
        assert ids_of(limit=1000) == [done_2, cut, done_1]
        assert ids_of(state="completed", limit=1) == [done_2]

        # A job that runs now appears at the head of the list, from memory to ledger.
        fresh = uid("fresh")
        assert terminal(execute(c, short_job(fresh))).name == "end"
        assert ids_of(limit=2) == [fresh, done_2]

        for params, field in [
            ({"state": "done"}, "state"),
            ({"state": ""}, "state"),
            ({"state": "COMPLETED"}, "state"),
            ({"limit": "0"}, "limit"),
            ({"limit": "1001"}, "limit"),
            ({"limit": "-1"}, "limit"),
            ({"limit": "ten"}, "limit"),
            ({"limit": "2.5"}, "limit"),
            ({"limit": ""}, "limit"),
            ({"order": "asc"}, "order"),
        ]:
            error = assert_error(c.get("/jobs", params=params), 400, "INVALID_REQUEST")
            assert field in [d["field"] for d in error["details"]], (params, error)


@pytest.fixture
def crash_dir():
    return Path(tempfile.mkdtemp(prefix="worker-orcd-crash-"))


def test_sigkill_marks_running_job_restarted(crash_dir):
    first = WorkerProcess(args=ARGS, state_dir=crash_dir).start()
    second = None
    streams: list[StreamThread] = []
    try:
        done, cut, running, waiting = uid("done"), uid("cut"), uid("running"), uid("waiting")
        with first.client() as c:
            assert terminal(execute(c, short_job(done))).name == "end"
        run_cancelled(first, cut)
        streams.append(StreamThread(first, long_job(running)).start())
        streams[0].wait_tokens(1)
        streams.append(StreamThread(first, short_job(waiting)).start())

        expected = {done: "completed", cut: "cancelled", running: "running", waiting: "queued"}

        def settled() -> dict | None:
            rows = ledger_rows(crash_dir)
            return rows if {k: r["state"] for k, r in rows.items()} == expected else None

        before = wait_until(settled, timeout=30, interval=0.05)
        first.kill()  # SIGKILL: no drain, no final writes
        for stream in streams:  # the streams break off with the connection, without a terminal event
            try:
                events = stream.join(30)
            except httpx.HTTPError:
                events = stream.events
            assert not [e for e in events if e.name in ("end", "error")]

        second = on_another_port(first).start()
        recovered = second.log.wait_for("ledger_recovered")
        assert recovered["jobs_marked_restarted"] == 2

        after = ledger_rows(crash_dir)
        assert after.keys() == before.keys()
        recovery_columns = {"state", "error_code", "error_message", "error_retriable", "ended_at"}
        for job_id in (running, waiting):
            row = after[job_id]
            assert (row["state"], row["error_code"], row["error_retriable"]) == ("failed", "WORKER_RESTARTED", 1)
            assert row["error_message"] and row["ended_at"]
            assert {k: v for k, v in row.items() if k not in recovery_columns} == {
                k: v for k, v in before[job_id].items() if k not in recovery_columns
            }
        assert after[running]["started_at"] is not None and after[waiting]["started_at"] is None
        for job_id in (done, cut):
            assert after[job_id] == before[job_id]  # the full row, unchanged

        with second.client() as c:
            record = job_of(c, running)
            assert record["state"] == "failed"
            assert record["error"]["code"] == "WORKER_RESTARTED" and record["error"]["retriable"] is True
            assert job_of(c, done)["state"] == "completed"
            assert job_of(c, cut)["state"] == "cancelled"
    finally:
        first.kill()
        if second is not None:
            second.stop()

