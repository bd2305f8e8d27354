"""Slots (WO-SLOT-1..5): a worker at `--parallel 4` runs four jobs at once in one engine, and a
cancel takes one stream out of the running batch while the others keep streaming.

Every test runs the real worker on the real model over HTTP. Streams are read on threads;
every wait is on an event or a poll with a deadline.
"""

from __future__ import annotations

import os
import signal

import pytest

from testkit.prompts import LONG_ANSWER_PROMPT, LONG_PROMPT
from testkit.streams import (
    StreamThread,
    assert_well_formed,
    cancel,
    job_of,
    terminal,
    uid,
    wait_idle,
    wait_job,
)
from testkit.waiting import wait_until
from testkit.worker import WorkerProcess

SLOTS = 4
TOKENS = 40
FLAGS = ("--parallel", str(SLOTS), "--max-queue", "8", "--threads", "1")


@pytest.fixture(scope="module")
def slotted(shared_worker):
    return shared_worker(*FLAGS)


@pytest.fixture
def http(slotted):
    with slotted.client() as c:
        wait_idle(c)
        yield c
        wait_idle(c)
        # WO-SLOT-3: no job leaves a cell behind.
        assert c.get("/health").json()["kv_cells"] == 0


def story(prefix: str, max_tokens: int = TOKENS) -> dict:
    """A greedy story: it runs to `max_tokens` (the answer is far longer)."""
    return {"job_id": uid(prefix), "prompt": LONG_ANSWER_PROMPT, "max_tokens": max_tokens, "temperature": 0}


def tokens_of(stream: StreamThread) -> int:
    return sum(e.name == "token" for e in stream.events)


def busy_slots(http) -> int:
    return http.get("/health").json()["slots_busy"]


def test_health_describes_the_slots(http):
    h = http.get("/health").json()
    assert h["parallel"] == SLOTS and h["slots_busy"] == 0 and h["slots"] == []
    assert h["spare_context"] is None  # one context, shared by the slots
    batch = h["batch"]
    assert batch["kv_cells_total"] == SLOTS * h["context_length"]
    # WO-SLOT-8: the step is sized by whole decodes against the stop budget, at most a prefill chunk.
    step, measured, budget = batch["step_tokens"], batch["step_measured_ms"], h["prefill_chunk"]["budget_ms"]
    assert 1 <= step <= h["prefill_chunk"]["tokens"]
    assert measured[str(step)] <= budget or step == 1, batch
    assert all(ms > budget for n, ms in measured.items() if int(n) > step), batch


def test_four_streams_run_at_once(http, slotted):
    # Long enough that the first outlasts the others' prompts, which share steps of
    # `step_tokens` with its tokens (WO-SLOT-8).
    streams = [StreamThread(slotted, story(f"slot{i}", 3 * TOKENS)).start() for i in range(SLOTS)]
    for s in streams:
        s.wait_tokens(1, timeout=120)
    # Every one has a token before any has ended: they run side by side, not in turn.
    assert all(not s.done.is_set() for s in streams)
    h = http.get("/health").json()
    assert h["slots_busy"] == SLOTS
    assert sorted(v["job_id"] for v in h["slots"]) == sorted(s.job_id for s in streams)
    # WO-SLOT-7: each job's cells while it runs, their sum the cells in use.
    assert all(v["kv_cells"] > 0 for v in h["slots"]) and h["kv_cells"] == sum(v["kv_cells"] for v in h["slots"])
    assert sorted(v["slot"] for v in h["slots"]) == list(range(SLOTS))
    for s in streams:
        events = s.join(120)
        assert_well_formed(events)
        end = terminal(events)
        assert end.name == "end" and end.data["stop_reason"] == "max_tokens"
        assert end.data["tokens_out"] == 3 * TOKENS
        assert job_of(http, s.job_id)["state"] == "completed"


def test_a_cancel_takes_one_stream_out_of_the_batch(http, slotted):
    """WO-SLOT-2: the cancelled job ends CANCELLED with its memory back; its neighbours keep
    streaming after the cancel and end whole."""
    streams = [StreamThread(slotted, story(f"batch{i}", 64)).start() for i in range(SLOTS)]
    for s in streams:
        s.wait_tokens(3, timeout=120)
    victim, neighbours = streams[1], [streams[0], *streams[2:]]
    at_cancel = {s.job_id: tokens_of(s) for s in neighbours}
    cancel(http, victim.job_id)
    events = victim.join(60)
    assert_well_formed(events)
    end = terminal(events)
    assert end.name == "error" and end.data["code"] == "CANCELLED"
    assert 0 <= end.data["stop_ms"] <= end.data["cancel_ms"]
    # Read at once after its end: it holds no slot, and the cells in use are its neighbours'.
    health = http.get("/health").json()
    assert victim.job_id not in [v["job_id"] for v in health["slots"]], health["slots"]
    assert health["kv_cells"] == sum(v["kv_cells"] for v in health["slots"]), health
    job = wait_job(http, victim.job_id, "cancelled")
    assert job["cancel_reason"] == "client" and job["tokens_out"] == end.data["tokens_out"] < 64
    for s in neighbours:
        ended = terminal(s.join(120))
        assert ended.name == "end" and ended.data["tokens_out"] == 64
        assert 64 - at_cancel[s.job_id] > 0  # tokens came after the neighbour's cancel


def test_a_cancel_in_its_prompt_leaves_the_decoding_neighbours(http, slotted):
    decoding = [StreamThread(slotted, story(f"dec{i}", 48)).start() for i in range(SLOTS - 1)]
    for s in decoding:
        s.wait_tokens(1, timeout=120)
    long = StreamThread(slotted, {"job_id": uid("prompt"), "prompt": LONG_PROMPT, "max_tokens": 8}).start()
    wait_until(
        lambda: any(v["job_id"] == long.job_id and v["phase"] == "prompt" for v in http.get("/health").json()["slots"]),
        timeout=60,
    )
    cancel(http, long.job_id)
    end = terminal(long.join(60))
    assert end.name == "error" and end.data["code"] == "CANCELLED" and end.data["tokens_out"] == 0
    assert wait_job(http, long.job_id, "cancelled")["tokens_out"] == 0
    for s in decoding:
        ended = terminal(s.join(120))
        assert ended.name == "end" and ended.data["tokens_out"] == 48


def test_a_short_job_beside_a_long_prompt_alone_ends_before_its_first_token(http, slotted):
    """WO-SLOT-8: a job that arrives while a long prompt goes alone takes its slot at once (the
    lone chunk gives way) and its short prompt goes first: it ends before the long job has a
    token, and the long job then ends whole."""
    long = StreamThread(slotted, {"job_id": uid("alone"), "prompt": LONG_PROMPT, "max_tokens": 4}).start()
    wait_until(
        lambda: any(v["job_id"] == long.job_id and v["phase"] == "prompt" for v in http.get("/health").json()["slots"]),
        timeout=60,
    )
    short = StreamThread(slotted, story("short", 4)).start()
    ended = terminal(short.join(120))
    assert ended.name == "end" and ended.data["tokens_out"] == 4
    assert tokens_of(long) == 0, long.events
    ended = terminal(long.join(120))
    assert ended.name == "end" and ended.data["tokens_out"] == 4


def test_jobs_past_the_slots_queue_and_a_queued_cancel_never_runs(http, slotted):
    streams = [StreamThread(slotted, story(f"q{i}", 32)).start() for i in range(SLOTS + 2)]
    # Two wait in the queue while four run. Read together, in one /health: a queue of two
    # alone can be two that have arrived before the slots took them, with one still to come.
    wait_until(lambda: (h := http.get("/health").json())["queue_depth"] == 2 and h["slots_busy"] == SLOTS, timeout=60)
    queued = [s for s in streams if job_of(http, s.job_id)["state"] == "queued"]
    assert len(queued) == 2 and busy_slots(http) == SLOTS
    cancel(http, queued[0].job_id)
    end = terminal(queued[0].join(60))
    assert end.name == "error" and end.data["code"] == "CANCELLED"
    assert job_of(http, queued[0].job_id)["started_at"] is None
    for s in streams:
        if s is not queued[0]:
            ended = terminal(s.join(180))
            assert ended.name == "end" and ended.data["tokens_out"] == 32


def test_a_disconnect_cancels_only_its_own_job(http, slotted):
    keep = [StreamThread(slotted, story(f"keep{i}", 48)).start() for i in range(2)]
    gone_id = uid("gone")
    with slotted.client() as c, c.stream("POST", "/execute", json=story("x") | {"job_id": gone_id}) as r:
        for line in r.iter_lines():
            if line.startswith("event: token"):
                break  # leave mid-stream: closing the connection is the cancel
    job = wait_job(http, gone_id, "cancelled", timeout=60)
    assert job["cancel_reason"] == "disconnect"
    for s in keep:
        assert terminal(s.join(120)).data["tokens_out"] == 48


def test_an_engine_death_ends_every_running_job_retriable_and_the_next_job_runs():
    """WO-SLOT-4: the engine process killed with several jobs in its batch: each ends
    ENGINE_FAILED (retriable), and a new engine serves the next job."""
    worker = WorkerProcess(args=list(FLAGS)).start()
    try:
        with worker.client() as http:
            streams = [StreamThread(worker, story(f"death{i}", 400)).start() for i in range(3)]
            for s in streams:
                s.wait_tokens(1, timeout=120)
            pid = http.get("/health").json()["engine"]["pid"]
            os.kill(pid, signal.SIGKILL)
            for s in streams:
                end = terminal(s.join(60))
                assert end.name == "error" and end.data["code"] == "ENGINE_FAILED" and end.data["retriable"] is True
            wait_until(lambda: http.get("/health").json()["engine"]["state"] == "ready", timeout=120)
            after = StreamThread(worker, story("after", 8)).start()
            assert terminal(after.join(120)).name == "end"
            assert http.get("/health").json()["kv_cells"] == 0
    finally:
        worker.stop()
