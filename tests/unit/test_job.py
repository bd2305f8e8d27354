"""The job state machine (WO-JOB-1) and its single terminal event (WO-JOB-2)."""

from __future__ import annotations

import random
import sys
import threading

import pytest

from testkit.jobs import cancelled, completed, failed, make_job
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import JobState, Phase
from worker_orcd.jobs.outcomes import cancel_error

Q, R, C, X, F = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.COMPLETED,
    JobState.CANCELLED,
    JobState.FAILED,
)
# The only transitions the contract allows.
ALLOWED = {(Q, R), (R, C), (R, X), (R, F), (Q, X), (Q, F)}

SNAPSHOT_FIELDS = {
    "job_id",
    "state",
    "cancel_requested",
    "cancel_requested_at",
    "cancel_reason",
    "queued_at",
    "started_at",
    "ended_at",
    "canceled_at",
    "tokens_out",
    "text",
    "text_truncated",
    "stop_reason",
    "error",
    "stop_ms",
    "cancel_ms",
}


def _tracked(job_id: str):
    """A job whose every state change is recorded, starting from `queued`."""
    states: list[JobState] = []
    job, sink = make_job(job_id, on_change=lambda j: states.append(j.state))
    states.append(job.state)
    return job, sink, states


def _transitions(states: list[JobState]) -> set[tuple[JobState, JobState]]:
    return {(a, b) for a, b in zip(states, states[1:]) if a is not b}


@pytest.mark.parametrize(
    "drive, final",
    [
        (lambda j: (j.start(), j.finish(completed())), C),
        (lambda j: (j.start(), j.finish(cancelled())), X),
        (lambda j: (j.start(), j.finish(failed())), F),
        (lambda j: (j.request_cancel(CancelReason.CLIENT), j.finish_cancelled_unstarted()), X),
        (lambda j: (j.request_cancel(CancelReason.DISCONNECT), j.finish_cancelled_unstarted()), X),
        # Shutdown ends a waiting job as failed (WORKER_SHUTDOWN), never as cancelled.
        (lambda j: (j.request_cancel(CancelReason.SHUTDOWN), j.finish_cancelled_unstarted()), F),
    ],
    ids=["run-complete", "run-cancel", "run-fail", "queued-cancel", "queued-disconnect", "queued-shutdown"],
)
def test_state_transitions(drive, final):
    job, sink, states = _tracked("transitions")
    assert job.state is Q and job.phase is Phase.QUEUED
    drive(job)
    assert job.state is final and final.terminal
    assert _transitions(states) <= ALLOWED
    assert job.phase is Phase.FINISHED and job.ended_at is not None

    # Nothing leaves a terminal state.
    assert job.start() is False
    assert job.finish(completed()) is False
    assert job.finish(cancelled()) is False
    assert job.finish_cancelled_unstarted() is False
    assert job.request_cancel(CancelReason.CLIENT) is Phase.FINISHED
    assert job.state is final
    assert len(sink.terminal()) == 1


def test_start_only_from_queued():
    job, _, states = _tracked("start-twice")
    assert job.start() is True
    assert job.started_at is not None and job.phase is Phase.PROMPT
    started_at = job.started_at
    assert job.start() is False
    assert job.started_at == started_at
    # A running job's cancel is the inference thread's business: the queued-only path loses.
    job.request_cancel(CancelReason.CLIENT)
    assert job.finish_cancelled_unstarted() is False
    assert job.state is R
    assert _transitions(states) == {(Q, R)}


def test_queued_job_cannot_complete_after_cancel():
    job, sink, _ = _tracked("queued-then-start")
    job.request_cancel(CancelReason.CLIENT)
    assert job.finish_cancelled_unstarted() is True
    # The inference thread takes it afterwards: it must not run.
    assert job.start() is False
    assert job.started_at is None
    [event] = sink.events
    assert event.name == "error" and event.data["code"] == "CANCELLED"
    assert event.data["tokens_out"] == 0 and event.data["stop_ms"] == 0.0
    assert event.data["cancel_ms"] >= 0


def _race_once(i: int):
    job, sink = make_job(f"race-{i}")
    barrier = threading.Barrier(4)
    wins: list[str] = []
    lock = threading.Lock()

    def won(name: str, ok: bool) -> None:
        if ok:
            with lock:
                wins.append(name)

    def inference() -> None:
        barrier.wait()
        if job.start():
            won("completed", job.finish(completed()))

    def queued_cancel() -> None:
        barrier.wait()
        job.request_cancel(CancelReason.CLIENT)
        won("queued-cancel", job.finish_cancelled_unstarted())

    def loop_cancel() -> None:
        barrier.wait()
        won("cancelled", job.finish(cancelled()))

    def failure() -> None:
        barrier.wait()
        won("failed", job.finish(failed()))

    contenders = [inference, queued_cancel, loop_cancel, failure]
    random.Random(i).shuffle(contenders)  # vary who reaches the barrier last
    threads = [threading.Thread(target=f) for f in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return job, sink, wins


def test_finish_wins_once():
    # Switch threads as often as possible so the contenders really interleave.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        seen = _race_many(300)
    finally:
        sys.setswitchinterval(old)
    # More than one contender must have won at some point, or the race was not a race.
    assert len(seen) >= 2, seen


def _race_many(n: int) -> set[str]:
    seen: set[str] = set()
    for i in range(n):
        job, sink, wins = _race_once(i)
        assert len(wins) == 1, wins
        terminal = sink.terminal()
        assert len(terminal) == 1 and sink.events[-1] is terminal[0]
        event = terminal[0]
        assert job.outcome is not None and job.outcome.event is event
        expected = {
            "completed": (C, "end", None),
            "queued-cancel": (X, "error", "CANCELLED"),
            "cancelled": (X, "error", "CANCELLED"),
            "failed": (F, "error", "INTERNAL"),
        }[wins[0]]
        assert (job.state, event.name, event.data.get("code")) == expected
        seen.add(wins[0])
    return seen


def test_request_cancel_first_reason_wins():
    job, sink = make_job("cancel-reasons")
    assert job.request_cancel(CancelReason.CLIENT) is Phase.QUEUED
    first_at = job.cancel_requested_at
    assert first_at is not None and job.cancel_requested
    job.start()
    assert job.request_cancel(CancelReason.DISCONNECT) is Phase.PROMPT
    assert job.cancel_flag.reason is CancelReason.CLIENT
    assert job.cancel_requested_at == first_at
    assert sink.events == []  # a cancel only raises the flag; the loop emits the event


def test_late_cancel_changes_nothing():
    job, _ = make_job("late-cancel")
    job.start()
    job.finish(completed())
    before = job.snapshot()
    assert job.request_cancel(CancelReason.CLIENT) is Phase.FINISHED
    assert job.snapshot() == before
    assert before["state"] == "completed" and before["cancel_requested"] is False


def test_snapshot_fields():
    job, _ = make_job("snapshot")
    snap = job.snapshot()
    assert set(snap) == SNAPSHOT_FIELDS
    assert snap["state"] == "queued" and snap["error"] is None and snap["text"] == ""

    job.start()
    job.append_text("Hello")
    job.append_text(", world")
    job.tokens_out = 2
    job.request_cancel(CancelReason.DISCONNECT)
    job.finish(cancelled(tokens_out=2))
    snap = job.snapshot()
    assert set(snap) == SNAPSHOT_FIELDS
    assert snap["state"] == "cancelled"
    assert snap["text"] == "Hello, world" and snap["tokens_out"] == 2
    assert snap["cancel_reason"] == "disconnect" and snap["cancel_requested"] is True
    assert snap["error"] == {
        "code": "CANCELLED",
        "message": "Job cancelled by client request",
        "retriable": False,
    }
    assert snap["canceled_at"] == snap["ended_at"] is not None
    assert snap["stop_ms"] == 0.1 and snap["cancel_ms"] == 0.2
    # Times are RFC 3339 UTC with milliseconds.
    for key in ("queued_at", "started_at", "ended_at", "cancel_requested_at"):
        assert snap[key].endswith("Z") and len(snap[key]) == len("2026-11-25T12:00:00.123Z")


def test_completed_snapshot_has_no_error():
    job, _ = make_job("snapshot-done")
    job.start()
    job.finish(completed(tokens_out=3))
    snap = job.snapshot()
    assert snap["state"] == "completed" and snap["stop_reason"] == "max_tokens"
    assert snap["error"] is None and snap["canceled_at"] is None
    assert snap["stop_ms"] is None and snap["cancel_ms"] is None


@pytest.mark.parametrize(
    "reason, code, retriable",
    [
        (CancelReason.CLIENT, ErrorCode.CANCELLED, False),
        (CancelReason.DISCONNECT, ErrorCode.CANCELLED, False),
        (CancelReason.TIMEOUT, ErrorCode.INFERENCE_TIMEOUT, True),
        (CancelReason.SHUTDOWN, ErrorCode.WORKER_SHUTDOWN, True),
    ],
)
def test_cancel_error_codes(reason, code, retriable):
    got_code, message, got_retriable = cancel_error(reason)
    assert (got_code, got_retriable) == (code, retriable)
    assert message


def test_tokens_racing_the_terminal_event_never_follow_it():
    """WO-JOB-2: the channel's reader emits tokens while another thread (a forced cancel,
    a shutdown) finishes the job: nothing is emitted after the terminal event, and the
    sink being cleared under the emitter never breaks it."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors: list[BaseException] = []
    try:
        for i in range(200):
            job, sink = make_job(f"emit-race-{i}")
            record = job.sink

            def slow_sink(event, record=record) -> None:  # as the real channel: a lock, a wake-up
                for _ in range(200):
                    pass
                record(event)

            job.sink = slow_sink
            assert job.start()
            go = threading.Barrier(2)

            def tokens() -> None:
                go.wait()
                try:
                    for n in range(300):
                        job.emit(events.token("x", n))
                except BaseException as exc:  # noqa: BLE001 - any error is the finding
                    errors.append(exc)

            emitter = threading.Thread(target=tokens)
            emitter.start()
            go.wait()
            for _ in range(random.randrange(50)):
                pass
            job.finish(cancelled())
            emitter.join()
            assert not errors, errors
            assert sink.events[-1].terminal and len(sink.terminal()) == 1
    finally:
        sys.setswitchinterval(old)
