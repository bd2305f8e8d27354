"""Faults (WO-FAULT-1, WO-FAULT-2, WO-SSE-4): the inference timeout, injected
engine failures, and a prompt too long for the context."""

from __future__ import annotations

import pytest

from testkit.prompts import CHAT, LONG_ANSWER_PROMPT, LONG_PROMPT
from testkit.streams import assert_error, assert_well_formed, job_of, terminal, uid
from testkit.waiting import wait_until
from testkit.wire import execute
from testkit.worker import WorkerProcess

SHORT = CHAT.format("Name a fruit.")
# Resident memory may wobble by allocator noise; a leaked 4096-token context is ~100 MiB.
RSS_SLACK = 8 * 1024 * 1024


def job(job_id: str, max_tokens: int = 4, prompt: str = SHORT) -> dict:
    return {"job_id": job_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}


def assert_normal_job(worker: WorkerProcess, max_tokens: int = 3) -> None:
    with worker.client() as c:
        job_id = uid("normal")
        events = execute(c, job(job_id, max_tokens))
        assert_well_formed(events)
        assert terminal(events).name == "end"
        assert job_of(c, job_id)["state"] == "completed"


# -- WO-FAULT-1 and the context check: a small context and a 1 s timeout ------------------


@pytest.fixture(scope="module")
def strict_worker():
    w = WorkerProcess(args=["--threads", "1", "--inference-timeout-sec", "1", "--n-ctx", "256"]).start()
    yield w
    w.stop()


def test_inference_timeout(strict_worker):
    job_id = uid("timeout")
    with strict_worker.client() as c:
        # Greedy decoding of this prompt goes on for far longer than 1 s (it fills the context).
        events = execute(c, job(job_id, max_tokens=200, prompt=LONG_ANSWER_PROMPT))
        assert events[0].name == "started"
        end = terminal(events)
        assert end.name == "error"
        assert end.data["code"] == "INFERENCE_TIMEOUT" and end.data["retriable"] is True
        # tokens_out counts model tokens; a token event may carry several (WO-SSE-1).
        assert end.data["tokens_out"] >= sum(e.name == "token" for e in events) > 0
        assert end.data["stop_ms"] >= 0 and end.data["cancel_ms"] >= end.data["stop_ms"]
        record = job_of(c, job_id)
        assert record["state"] == "failed"
        assert record["error"]["code"] == "INFERENCE_TIMEOUT" and record["error"]["retriable"] is True
        assert record["cancel_reason"] == "timeout" and record["text"]
        assert c.get("/health").json()["status"] == "healthy"
    strict_worker.log.wait_for("cancelled", job_id=job_id, reason="timeout")
    assert_normal_job(strict_worker)  # well within the timeout


def test_prompt_too_long_for_the_context_is_400(strict_worker):
    job_id = uid("too-long")
    with strict_worker.client() as c:
        error = assert_error(c.post("/execute", json=job(job_id, prompt=LONG_PROMPT)), 400, "INVALID_REQUEST")
        assert error["details"][0]["field"] == "prompt"
        assert "256" in error["details"][0]["reason"]  # names the context it did not fit
        # The prompt fits but prompt + max_tokens does not.
        error = assert_error(
            c.post("/execute", json=job(job_id, max_tokens=250, prompt=SHORT)), 400, "INVALID_REQUEST"
        )
        assert [d["field"] for d in error["details"]] == ["max_tokens"]
        # Nothing was queued or run.
        assert_error(c.get(f"/jobs/{job_id}"), 404, "JOB_NOT_FOUND")
        health = c.get("/health").json()
        assert health["status"] == "healthy" and health["queue_depth"] == 0 and health["active_job"] is None
    assert strict_worker.log.events("job_queued", job_id=job_id) == []


# -- WO-FAULT-2: injected engine failures -------------------------------------------------


@pytest.fixture(scope="module")
def faulty_worker():
    w = WorkerProcess(
        args=["--threads", "1"],
        env={"WORKER_ORCD_FAULTS": "decode=fault-decode-,context=fault-ctx-"},
    ).start()
    yield w
    w.stop()


def idle_rss(worker: WorkerProcess) -> int:
    """Resident memory once idle: after one job, so first-use allocations are counted."""
    assert_normal_job(worker)
    with worker.client() as c:
        wait_until(lambda: c.get("/health").json()["active_job"] is None, 30)
    return worker.settled_rss()


@pytest.mark.parametrize(
    "prefix, tokens_before_failure",
    [("fault-decode-", 2), ("fault-ctx-", 0)],
    ids=["decode", "context"],
)
def test_engine_failure_ends_job_with_internal(faulty_worker, prefix, tokens_before_failure):
    baseline = idle_rss(faulty_worker)
    job_id = uid(prefix.rstrip("-"))
    with faulty_worker.client() as c:
        events = execute(c, job(job_id, max_tokens=16))
        end = terminal(events)
        assert end.name == "error"
        assert end.data["code"] == "INTERNAL" and end.data["retriable"] is False
        assert end.data["message"]
        # The 3rd llama_decode fails: after the prompt and two tokens. A context that
        # cannot be made fails before anything is generated.
        assert end.data["tokens_out"] == tokens_before_failure
        assert sum(e.name == "token" for e in events) <= tokens_before_failure
        assert events[0].name == "started" and events[0].data["job_id"] == job_id  # the job did start
        record = job_of(c, job_id)
        assert record["state"] == "failed" and record["error"]["code"] == "INTERNAL"
        assert record["error"]["retriable"] is False
        assert record["tokens_out"] == tokens_before_failure
    faulty_worker.log.wait_for("job_failed", job_id=job_id, code="INTERNAL")

    # The job's context was released: the worker returns to its idle footprint ...
    wait_until(lambda: faulty_worker.rss_bytes() <= baseline + RSS_SLACK, timeout=30, interval=0.05)
    with faulty_worker.client() as c:
        assert c.get("/health").json()["status"] == "healthy"
    # ... and the next job runs normally.
    assert_normal_job(faulty_worker)


def test_repeated_faults_leave_the_worker_at_its_idle_footprint(faulty_worker):
    baseline = idle_rss(faulty_worker)
    with faulty_worker.client() as c:
        for i in range(4):
            prefix = "fault-decode-" if i % 2 == 0 else "fault-ctx-"
            end = terminal(execute(c, job(uid(prefix.rstrip("-")), max_tokens=8)))
            assert end.data["code"] == "INTERNAL"
    wait_until(lambda: faulty_worker.rss_bytes() <= baseline + RSS_SLACK, timeout=30, interval=0.05)
    assert_normal_job(faulty_worker)
    with faulty_worker.client() as c:
        assert c.get("/health").json()["status"] == "healthy"


def test_faults_touch_only_their_prefix(faulty_worker):
    # "fault-decod" is not the "fault-decode-" prefix; ids merely containing it run normally.
    with faulty_worker.client() as c:
        for job_id in (uid("fault-decod"), uid("x-fault-decode-"), uid("x-fault-ctx-")):
            end = terminal(execute(c, job(job_id, max_tokens=3)))
            assert end.name == "end", end.data
