"""Slots (WO-SLOT-2, WO-SLOT-3) under the promises every job has: an early cancel, the
inference timeout and a graceful shutdown, each while several jobs run in one batch.

The real worker on the real model over HTTP; every wait is on an event or a poll with a
deadline. Each job gets exactly one terminal event, and no KV cell is left behind.
"""

from __future__ import annotations

import signal

from testkit.prompts import LONG_ANSWER_PROMPT
from testkit.streams import StreamThread, assert_well_formed, cancel, job_of, terminal, uid, wait_idle
from testkit.waiting import wait_until

SLOTS = 4
FLAGS = ("--parallel", str(SLOTS), "--max-queue", "8", "--threads", "1")  # tests/e2e/test_slots.py's worker


def story(prefix: str, max_tokens: int) -> dict:
    return {"job_id": uid(prefix), "prompt": LONG_ANSWER_PROMPT, "max_tokens": max_tokens, "temperature": 0}


def running(streams: list[StreamThread]) -> None:
    for s in streams:
        s.wait_tokens(1, timeout=120)


def one_terminal(stream: StreamThread, timeout: float = 120):
    events = stream.join(timeout)
    assert stream.status == 200, (stream.status, stream.error)
    assert_well_formed(events)  # events in order, exactly one terminal event, nothing after it
    return terminal(events)


def test_an_early_cancel_never_takes_a_slot_while_others_run(shared_worker):
    """WO-CANCEL-12 with slots: the cancel comes before its job, which ends CANCELLED at once
    with nothing run; the three jobs in the batch run to their end."""
    worker = shared_worker(*FLAGS)
    with worker.client() as http:
        wait_idle(http)
        others = [StreamThread(worker, story(f"early-n{i}", 48)).start() for i in range(3)]
        running(others)
        early = uid("early")
        cancel(http, early)
        late = StreamThread(worker, story("unused", 48) | {"job_id": early}).start()
        events = late.join(60)
        assert [e.name for e in events] == ["error"], events  # no `started`: it never ran
        assert events[0].data["code"] == "CANCELLED" and events[0].data["tokens_out"] == 0
        assert job_of(http, early)["started_at"] is None
        for s in others:
            end = one_terminal(s)
            assert end.name == "end" and end.data["tokens_out"] == 48
        wait_idle(http)
        assert http.get("/health").json()["kv_cells"] == 0


def test_the_inference_timeout_ends_each_running_job_alone(own_worker):
    """Each running job keeps its own deadline: the long ones end INFERENCE_TIMEOUT, each
    once, and the short one beside them ends as it would have."""
    worker = own_worker(*FLAGS[:-2], "--inference-timeout-sec", "3")
    with worker.client() as http:
        longs = [StreamThread(worker, story(f"timeout{i}", 2000)).start() for i in range(3)]
        short = StreamThread(worker, story("short", 8)).start()
        end = one_terminal(short)
        assert end.name == "end" and end.data["tokens_out"] == 8
        for s in longs:
            end = one_terminal(s)
            assert end.name == "error" and end.data["code"] == "INFERENCE_TIMEOUT", end.data
            assert 0 < end.data["tokens_out"] < 2000
            assert job_of(http, s.job_id)["state"] == "failed"
        wait_idle(http)
        assert http.get("/health").json()["kv_cells"] == 0


def test_sigterm_with_several_running_and_one_queued(own_worker):
    """WO-SHUT-1 with slots: the queued job ends WORKER_SHUTDOWN at once; the running ones
    have the grace to finish (the short one does) and are then cancelled with
    WORKER_SHUTDOWN, each once; the process exits 0."""
    worker = own_worker(*FLAGS[:-2], "--shutdown-grace-sec", "8")
    longs = [StreamThread(worker, story(f"drain{i}", 2000)).start() for i in range(3)]
    running(longs)
    # Started last, so it is still running when the signal comes, and short enough to end in the grace.
    short = StreamThread(worker, story("drain-short", 40)).start()
    running([short])
    queued = StreamThread(worker, story("drain-queued", 8)).start()
    worker.log.wait_for("job_queued", job_id=queued.job_id)
    with worker.client() as http:
        wait_until(lambda: http.get("/health").json()["queue_depth"] == 1, timeout=30)

    worker.proc.send_signal(signal.SIGTERM)
    events = queued.join(30)
    assert [e.name for e in events] == ["error"], events  # it never ran
    assert events[0].data["code"] == "WORKER_SHUTDOWN" and events[0].data["tokens_out"] == 0
    end = one_terminal(short, 60)
    assert end.name == "end" and end.data["tokens_out"] == 40  # done within the grace
    for s in longs:
        end = one_terminal(s, 60)
        assert end.name == "error" and end.data["code"] == "WORKER_SHUTDOWN", end.data
        assert end.data["retriable"] is True and end.data["tokens_out"] > 0
    assert worker.proc.wait(60) == 0
    assert worker.log.events("worker_stopped")
