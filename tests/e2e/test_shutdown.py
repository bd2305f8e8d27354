"""Graceful shutdown (WO-SHUT-1, WO-HEALTH-3): SIGTERM, SIGINT and POST /shutdown
drain the worker, every job gets its terminal event and reaches the ledger, and
the process exits 0."""

from __future__ import annotations

import functools
import signal

import httpx
import pytest

from testkit.prompts import CHAT, LONG_ANSWER_PROMPT
from testkit.streams import StreamThread, assert_error, job_of, terminal, uid
from testkit.worker import WorkerProcess

SHORT = CHAT.format("Name a colour.")
EXIT_TIMEOUT = 60  # generous: the drain itself is bounded by the grace period


def long_job(job_id: str, max_tokens: int = 2048) -> dict:
    # Greedy decoding of this prompt runs for over a thousand tokens.
    return {"job_id": job_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": max_tokens, "temperature": 0}


def short_job(job_id: str) -> dict:
    return {"job_id": job_id, "prompt": SHORT, "max_tokens": 3, "temperature": 0}


@pytest.fixture
def workers(own_worker, tmp_path):
    """Workers started by a test, all stopped at teardown; they share one state dir."""
    return functools.partial(own_worker, state_dir=tmp_path)


def start_running_and_queued(worker: WorkerProcess, running_body: dict) -> tuple[StreamThread, StreamThread]:
    running = StreamThread(worker, running_body).start()
    running.wait_tokens(1)
    queued = StreamThread(worker, short_job(uid("queued"))).start()
    worker.log.wait_for("job_queued", job_id=queued.job_id)
    return running, queued


def assert_worker_shutdown(event, *, ran: bool) -> None:
    assert event.name == "error"
    assert event.data["code"] == "WORKER_SHUTDOWN" and event.data["retriable"] is True
    assert (event.data["tokens_out"] > 0) is ran


def exit_status(worker: WorkerProcess) -> int:
    assert worker.proc is not None
    return worker.proc.wait(EXIT_TIMEOUT)


def ledger_after_restart(start, job_ids: list[str]) -> tuple[WorkerProcess, dict[str, dict]]:
    again = start()
    with again.client() as c:
        records = {job_id: job_of(c, job_id) for job_id in job_ids}
    # A clean shutdown leaves nothing for crash recovery.
    assert again.log.events("ledger_recovered") == []
    return again, records


def test_sigterm_cancels_running_job_after_grace(workers):
    worker = workers("--shutdown-grace-sec", "0.5")
    running, queued = start_running_and_queued(worker, long_job(uid("running")))

    worker.proc.send_signal(signal.SIGTERM)
    queued_end = terminal(queued.join(30))
    assert_worker_shutdown(queued_end, ran=False)
    running_end = terminal(running.join(30))
    assert_worker_shutdown(running_end, ran=True)
    # The queued job was ended at once; the running one only when its grace ran out.
    assert queued_end.at <= running_end.at
    assert exit_status(worker) == 0
    assert worker.log.events("worker_stopped")

    _, records = ledger_after_restart(workers, [running.job_id, queued.job_id])
    r, q = records[running.job_id], records[queued.job_id]
    assert r["state"] == q["state"] == "failed"
    assert r["error"]["code"] == q["error"]["code"] == "WORKER_SHUTDOWN"
    assert r["error"]["retriable"] is q["error"]["retriable"] is True
    assert r["cancel_reason"] == q["cancel_reason"] == "shutdown"
    assert r["started_at"] is not None and r["text"] and r["tokens_out"] == running_end.data["tokens_out"]
    assert q["started_at"] is None and q["tokens_out"] == 0


def test_sigterm_lets_running_job_finish_within_grace(workers):
    worker = workers("--shutdown-grace-sec", "60")
    # A few seconds of tokens: it is still running while the drain is looked at, and
    # ends by itself well within the grace.
    running, queued = start_running_and_queued(worker, long_job(uid("finishing"), max_tokens=150))

    worker.proc.send_signal(signal.SIGTERM)
    worker.log.wait_for("shutdown_draining")
    assert_worker_shutdown(terminal(queued.join(30)), ran=False)

    # While the running job drains: new jobs are refused with 503, or, if the job has
    # already ended and the socket is closed, the connection is. Never a hang.
    rejected = uid("late")
    with httpx.Client(base_url=worker.url, timeout=10) as c:
        try:
            r = c.post("/execute", json=short_job(rejected))
        except httpx.ConnectError:
            assert running.done.wait(30), "connection refused while the running job was still streaming"
        else:
            assert_error(r, 503, "WORKER_SHUTTING_DOWN")
            assert r.headers["Retry-After"]
        try:
            health = c.get("/health")
        except httpx.ConnectError:
            assert running.done.wait(30)
        else:
            assert health.status_code == 200 and health.json()["status"] == "unhealthy"

    end = terminal(running.join(EXIT_TIMEOUT))
    assert end.name == "end" and end.data["stop_reason"] in ("max_tokens", "eos")
    assert exit_status(worker) == 0

    again, records = ledger_after_restart(workers, [running.job_id, queued.job_id])
    assert records[running.job_id]["state"] == "completed"
    assert records[running.job_id]["tokens_out"] == end.data["tokens_out"]
    assert records[running.job_id]["text"]
    assert records[queued.job_id]["state"] == "failed"
    assert records[queued.job_id]["error"]["code"] == "WORKER_SHUTDOWN"
    with again.client() as c:
        assert_error(c.get(f"/jobs/{rejected}"), 404, "JOB_NOT_FOUND")  # the refused job never existed


@pytest.mark.parametrize("how", ["http", "sigint"])
def test_idle_shutdown_exits_0(workers, how):
    worker = workers()
    if how == "http":
        with worker.client() as c:
            r = c.post("/shutdown")
            assert r.status_code == 202
            assert r.json() == {"status": "shutting_down"}
    else:
        worker.proc.send_signal(signal.SIGINT)
    assert exit_status(worker) == 0
    worker.log.wait_for("shutdown_requested")
    assert worker.log.events("worker_stopped")


def test_post_shutdown_drains_like_sigterm(workers):
    worker = workers("--shutdown-grace-sec", "0.5")
    running, queued = start_running_and_queued(worker, long_job(uid("running")))
    with worker.client() as c:
        assert c.post("/shutdown").status_code == 202
    assert_worker_shutdown(terminal(queued.join(30)), ran=False)
    assert_worker_shutdown(terminal(running.join(30)), ran=True)
    assert exit_status(worker) == 0
