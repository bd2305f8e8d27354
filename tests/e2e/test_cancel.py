"""Cancellation on the real worker (specs/contract.md, "Cancellation"): prompt, decode, queue, disconnect, races, logs.

Latency budgets are the contract's (stop_ms <= 100, cancel_ms <= 5000); other
timings are bounded generously because the machine is shared.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from testkit.prompts import LONG_ANSWER_PROMPT, SHORT_PROMPT
from testkit.streams import (
    CORRELATION_HEADER,
    StreamThread,
    assert_well_formed,
    cancel,
    job_of,
    terminal,
    uid,
    wait_active,
    wait_job,
)
from testkit.waiting import wait_until
from testkit.wire import execute, iter_events, text_of
from tests.e2e.helpers import long_prompt_job

pytestmark = pytest.mark.usefixtures("worker_idle")

STOP_MS_BUDGET = 100
CANCEL_MS_BUDGET = 5000
CANCELLED_FIELDS = {"code", "message", "retriable", "tokens_out", "stop_ms", "cancel_ms"}


def assert_cancelled_event(event, tokens_out=None):
    assert event.name == "error"
    assert set(event.data) == CANCELLED_FIELDS
    assert event.data["code"] == "CANCELLED" and event.data["retriable"] is False
    assert 0 <= event.data["stop_ms"] <= STOP_MS_BUDGET
    assert event.data["stop_ms"] <= event.data["cancel_ms"] <= CANCEL_MS_BUDGET
    if tokens_out is not None:
        assert event.data["tokens_out"] == tokens_out


def long_answer(job_id: str, max_tokens: int = 400) -> dict:
    return {"job_id": job_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": max_tokens, "temperature": 0}


def test_cancel_after_k_tokens(client, worker):
    k = 5
    job_id = uid("after-k")
    stream = StreamThread(worker, long_answer(job_id)).start()
    stream.wait_tokens(k)
    cancel(client, job_id)
    events = stream.join()

    assert_well_formed(events)
    end = terminal(events)
    assert_cancelled_event(end)
    tokens_out = end.data["tokens_out"]
    assert k <= tokens_out < 400

    job = job_of(client, job_id)
    assert job["state"] == "cancelled" and job["cancel_reason"] == "client"
    assert job["cancel_requested"] is True and job["cancel_requested_at"]
    assert job["canceled_at"] == job["ended_at"]
    assert job["error"] == {"code": "CANCELLED", "message": end.data["message"], "retriable": False}
    assert job["tokens_out"] == tokens_out
    assert (job["stop_ms"], job["cancel_ms"]) == (end.data["stop_ms"], end.data["cancel_ms"])
    # WO-JOBS-1: the partial text is exactly what was streamed.
    assert job["text"] == text_of(events) and job["text"]
    assert job["stop_reason"] is None


def test_cancel_during_long_prompt(client, worker):
    job_id = uid("long-prompt")
    stream = StreamThread(worker, long_prompt_job(job_id)).start()
    wait_active(client, job_id)
    t_cancel = time.perf_counter()
    cancel(client, job_id)
    events = stream.join()
    waited = events[-1].at - t_cancel

    end = terminal(events)
    assert_cancelled_event(end, tokens_out=0)
    assert [e.name for e in events] == ["started", "error"]  # it was running: in its prompt
    # Evaluating this prompt takes seconds; the abort callback stops it mid-graph.
    assert waited < 2.0, waited
    job = job_of(client, job_id)
    assert job["state"] == "cancelled" and job["tokens_out"] == 0 and job["text"] == ""
    ack = worker.log.wait_for("cancel_ack", job_id=job_id)
    assert ack["phase"] == "prompt"


def test_cancel_twice(client, worker):
    job_id = uid("twice")
    stream = StreamThread(worker, long_answer(job_id)).start()
    stream.wait_tokens(2)
    cancel(client, job_id)
    cancel(client, job_id)
    events = stream.join()
    assert_cancelled_event(terminal(events))

    first = job_of(client, job_id)
    assert first["state"] == "cancelled" and first["cancel_reason"] == "client"
    # Once more after the end: still 202, nothing moves.
    cancel(client, job_id)
    assert job_of(client, job_id) == first
    # Three requests logged, one stop: the log is read on a thread, so wait for it.
    wait_until(lambda: len(worker.log.events("cancel_request", job_id=job_id)) == 3)
    assert len(worker.log.events("cancel_ack", job_id=job_id)) == 1
    assert len(worker.log.events("cancelled", job_id=job_id)) == 1


def test_cancel_unknown_job(client, worker):
    job_id = uid("unknown")
    cancel(client, job_id)
    line = worker.log.wait_for("cancel_request", job_id=job_id)
    assert line["phase"] == "unknown"
    # A cancel does not create the job.
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_cancel_finished_job(client, worker):
    job_id = uid("finished")
    events = execute(client, {"job_id": job_id, "prompt": SHORT_PROMPT, "max_tokens": 64, "temperature": 0})
    assert terminal(events).name == "end"
    before = job_of(client, job_id)
    cancel(client, job_id)
    assert worker.log.wait_for("cancel_request", job_id=job_id)["phase"] == "finished"
    after = job_of(client, job_id)
    assert after == before
    assert after["state"] == "completed" and after["cancel_requested"] is False and after["error"] is None


def test_cancel_queued_job(client, worker):
    ahead_id, queued_id = uid("ahead"), uid("queued")
    ahead = StreamThread(worker, long_prompt_job(ahead_id)).start()
    wait_active(client, ahead_id)
    queued = StreamThread(worker, {"job_id": queued_id, "prompt": "Hi", "max_tokens": 4}).start()
    worker.log.wait_for("job_queued", job_id=queued_id)
    assert queued.opened.wait(10) and queued.status == 200  # its stream is open while it waits

    cancel(client, queued_id)
    events = queued.join()
    # It never ran: no `started`, just CANCELLED.
    assert [e.name for e in events] == ["error"]
    assert_cancelled_event(events[0], tokens_out=0)
    assert events[0].data["stop_ms"] == 0
    job = job_of(client, queued_id)
    assert job["state"] == "cancelled" and job["started_at"] is None and job["text"] == ""
    assert worker.log.wait_for("cancel_request", job_id=queued_id)["phase"] == "queued"

    # The job ahead kept running all along.
    health = client.get("/health").json()
    assert health["active_job"] == ahead_id and health["queue_depth"] == 0
    assert job_of(client, ahead_id)["state"] == "running"
    assert not ahead.done.is_set()
    cancel(client, ahead_id)
    assert_cancelled_event(terminal(ahead.join()))
    # The cancelled job never ran after the one ahead either.
    assert job_of(client, queued_id)["started_at"] is None
    assert not worker.log.events("cancel_ack", job_id=queued_id)


def test_disconnect_cancels(client, worker):
    job_id = uid("disconnect")
    with client.stream("POST", "/execute", json=long_answer(job_id)) as r:
        seen = 0
        for event in iter_events(r):
            seen += event.name == "token"
            if seen == 3:
                break
    # Leaving the block closed the connection mid-stream.
    job = wait_job(client, job_id, "cancelled")
    assert job["cancel_reason"] == "disconnect"
    assert job["error"]["code"] == "CANCELLED"
    assert 3 <= job["tokens_out"] < 400
    assert 0 <= job["stop_ms"] <= STOP_MS_BUDGET and job["cancel_ms"] <= CANCEL_MS_BUDGET
    line = worker.log.wait_for("cancel_request", job_id=job_id)
    assert line["reason"] == "disconnect"
    assert worker.log.wait_for("cancelled", job_id=job_id)["reason"] == "disconnect"


class Canceller:
    """A cancel on a connection opened in advance, sent at the moment `fire_at` names."""

    def __init__(self, worker, job_id: str) -> None:
        self.job_id = job_id
        self.ready = threading.Event()
        self.status: int | None = None
        self.aimed_at: float | None = None  # the perf_counter() moment it was aimed at
        self._go = threading.Event()
        self._client = worker.client()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def fire_at(self, moment: float) -> None:
        self.aimed_at = moment
        self._go.set()

    def _run(self) -> None:
        with self._client as c:
            c.get("/health")  # connect now, so the cancel costs one round trip
            self.ready.set()
            self._go.wait(60)
            if self.aimed_at is not None:
                # Aiming, not waiting for anything: the moment of the cancel is what the test varies.
                time.sleep(max(0.0, self.aimed_at - time.perf_counter()))
            self.status = c.post("/cancel", json={"job_id": self.job_id}).status_code

    def join(self) -> int | None:
        self._go.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self.status


RACES = 40
AIM_STEP = 0.25  # token periods


def test_cancel_race_around_last_token(client, worker):
    """WO-JOB-2: cancels aimed at the last token, from a token period before it is due to one
    after, the period measured on each job's own tokens. Whichever wins, the job has exactly
    one terminal event, last on the wire, and its record agrees: CANCELLED one token short,
    with the event's stop_ms and cancel_ms, or completed with every token. Both sides win.

    The aim is a staircase: after a cancel that won, the next one aims later; after one that
    lost, earlier; so the cancels keep landing where the race is, whatever the machine's speed.
    """
    rng = random.Random(20261125)
    outcomes = {"end": 0, "CANCELLED": 0}
    aim = 0.0  # where the cancels land, in token periods after the last token is due (-1..1)
    for i in range(RACES):
        job_id = uid(f"race{i}")
        max_tokens = 4 + i % 3  # the answer is longer: every job ends at max_tokens, or cancelled
        body = {"job_id": job_id, "prompt": SHORT_PROMPT, "max_tokens": max_tokens, "temperature": 0}
        canceller = Canceller(worker, job_id)
        assert canceller.ready.wait(30)
        offset = aim + rng.uniform(-AIM_STEP, AIM_STEP)

        def on_event(stream, event, max_tokens=max_tokens, offset=offset, canceller=canceller) -> None:
            # At the last token but one: the job's token period so far says when the last is due.
            if event.name == "token" and event.data["i"] == max_tokens - 2:
                times = [e.at for e in stream.events if e.name == "token"]
                period = (times[-1] - times[0]) / (len(times) - 1)
                canceller.fire_at(times[-1] + period * (1.0 + offset))

        events = StreamThread(worker, body, on_event=on_event).start().join()
        assert canceller.join() == 202  # whatever the job's state when it landed
        assert canceller.aimed_at is not None, [e.name for e in events]

        assert_well_formed(events)  # exactly one terminal event, last, read to the stream's close
        end = terminal(events)
        tokens = [e for e in events if e.name == "token"]
        job = wait_job(client, job_id, "completed" if end.name == "end" else "cancelled")
        assert job["tokens_out"] == end.data["tokens_out"] == len(tokens)
        assert job["text"] == text_of(events)
        if end.name == "end":  # the last token won
            assert end.data["stop_reason"] == "max_tokens" and len(tokens) == max_tokens
            assert job["stop_reason"] == "max_tokens" and job["error"] is None
            assert job["stop_ms"] is None and job["cancel_ms"] is None and job["canceled_at"] is None
            # A cancel that found the job still ending is recorded, and changed nothing.
            assert job["cancel_requested"] is False or job["cancel_reason"] == "client"
            outcomes["end"] += 1
            aim = max(-1.0, aim - AIM_STEP)
        else:  # the cancel won: the last decode was stopped, its token never came
            assert_cancelled_event(end, tokens_out=max_tokens - 1)
            assert job["cancel_reason"] == "client" and job["stop_reason"] is None
            assert job["error"] == {"code": "CANCELLED", "message": end.data["message"], "retriable": False}
            assert (job["stop_ms"], job["cancel_ms"]) == (end.data["stop_ms"], end.data["cancel_ms"])
            assert job["canceled_at"] == job["ended_at"]
            outcomes["CANCELLED"] += 1
            aim = min(1.0, aim + AIM_STEP)
    assert outcomes["end"] and outcomes["CANCELLED"], outcomes


def test_cancel_log_lines(client, worker):
    cid = uid("cancel-corr")
    job_id = uid("logged")
    stream = StreamThread(worker, long_answer(job_id), headers={CORRELATION_HEADER: cid}).start()
    stream.wait_tokens(2)
    # The orchestrator cancels under the job's correlation id.
    cancel(client, job_id, headers={CORRELATION_HEADER: cid})
    end = terminal(stream.join())

    request = worker.log.wait_for("cancel_request", job_id=job_id)
    ack = worker.log.wait_for("cancel_ack", job_id=job_id)
    done = worker.log.wait_for("cancelled", job_id=job_id)
    for line in (request, ack, done):
        # WO-OBS-2: one schema for every line.
        assert list(line)[:4] == ["ts", "level", "worker_id", "event"]
        assert line["worker_id"] == "test-worker" and line["level"] == "info"
        assert line["job_id"] == job_id and line["correlation_id"] == cid
    assert request["phase"] == "decode" and request["reason"] == "client"
    assert ack["stop_ms"] == end.data["stop_ms"]
    assert done["stop_ms"] == end.data["stop_ms"] and done["cancel_ms"] == end.data["cancel_ms"]
    assert done["tokens_out"] == end.data["tokens_out"]
    wait_until(lambda: job_of(client, job_id)["state"] == "cancelled")
