"""A cancel that comes before its job is kept (WO-CANCEL-12).

Orchestrators send the cancel while their execute is still on its way: the
worker remembers a cancel for an id it does not know, and the execute that
follows within the window ends at once with CANCELLED, never touching the engine.
"""

from __future__ import annotations

import json
import threading

import pytest

from testkit.prompts import SHORT_PROMPT
from testkit.streams import cancel, job_of, terminal, uid
from testkit.waiting import wait_until
from testkit.wire import execute, iter_events
from testkit.worker import WorkerProcess

pytestmark = pytest.mark.usefixtures("worker_idle")


def job_body(job_id: str) -> dict:
    return {"job_id": job_id, "prompt": SHORT_PROMPT, "max_tokens": 64, "temperature": 0}


def assert_cancelled_before_running(events, record) -> None:
    assert [e.name for e in events] == ["error"]  # no `started`: it never ran
    data = events[0].data
    assert data["code"] == "CANCELLED" and data["tokens_out"] == 0 and data["stop_ms"] == 0.0
    assert record["state"] == "cancelled" and record["cancel_reason"] == "client"
    assert record["started_at"] is None and record["tokens_out"] == 0 and record["text"] == ""
    # Both times: the cancel's, which came first, and the execute's.
    assert record["cancel_requested_at"] <= record["queued_at"] <= record["ended_at"]


def test_cancel_then_execute(client, worker):
    job_id = uid("early")
    cancel(client, job_id)
    events = execute(client, job_body(job_id))
    assert_cancelled_before_running(events, job_of(client, job_id))
    line = worker.log.wait_for("cancelled", job_id=job_id)
    assert line["phase"] == "before_execute" and line["reason"] == "client"
    assert not worker.log.events("job_queued", job_id=job_id)
    # The ledger has it too, with both times.
    listed = wait_until(lambda: [j for j in client.get("/jobs").json()["jobs"] if j["job_id"] == job_id])
    assert listed[0]["state"] == "cancelled" and listed[0]["cancel_requested_at"]
    # The id is taken like any job's.
    assert client.post("/execute", json=job_body(job_id)).status_code == 409


def test_cancel_while_the_execute_is_in_flight(client, worker):
    """The execute's body is still arriving when the cancel is answered: the job must not run."""
    job_id = uid("inflight")
    body = json.dumps(job_body(job_id)).encode()
    first_part_sent, cancel_answered = threading.Event(), threading.Event()
    result: dict = {}

    def slow_body():
        yield body[:10]
        first_part_sent.set()
        assert cancel_answered.wait(30)
        yield body[10:]

    def run() -> None:
        with worker.client() as c:
            with c.stream("POST", "/execute", content=slow_body(), headers={"Content-Type": "application/json"}) as r:
                result["status"] = r.status_code
                result["events"] = list(iter_events(r))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert first_part_sent.wait(30)
    cancel(client, job_id)
    cancel_answered.set()
    thread.join(60)
    assert not thread.is_alive() and result["status"] == 200
    assert_cancelled_before_running(result["events"], job_of(client, job_id))


def test_window_of_zero_keeps_nothing():
    w = WorkerProcess(args=["--threads", "1", "--early-cancel-sec", "0"]).start()
    try:
        with w.client() as c:
            job_id = uid("late")
            cancel(c, job_id)
            events = execute(c, job_body(job_id))
            assert events[0].name == "started" and terminal(events).name == "end"
    finally:
        w.stop()
