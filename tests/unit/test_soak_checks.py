"""The soak's checks catch what they are for: a soak that cannot fail proves nothing."""

from __future__ import annotations

from bench.soak import JobRun, classify, ledger_problems, stream_problems

STARTED = ("started", {"job_id": "j"})
END = ("end", {"tokens_out": 2, "decode_time_ms": 1.0, "stop_reason": "max_tokens"})
CANCELLED = ("error", {"code": "CANCELLED", "tokens_out": 1, "stop_ms": 1.0, "cancel_ms": 2.0})


def run_of(*events, **kw) -> JobRun:
    run = JobRun("j", kw.pop("scenario", "complete"), {}, events=list(events), status=200)
    for k, v in kw.items():
        setattr(run, k, v)
    return run


def tok(text: str, i: int):
    return ("token", {"t": text, "i": i})


def snapshot(**fields):
    base = {
        "job_id": "j",
        "state": "completed",
        "tokens_out": 2,
        "text": "ab",
        "stop_reason": "max_tokens",
        "error": None,
        "cancel_reason": None,
        "stop_ms": None,
        "cancel_ms": None,
    }
    return {**base, **fields}


def test_a_good_stream_has_no_problem():
    assert stream_problems(run_of(STARTED, tok("a", 0), tok("b", 1), END)) == []
    assert ledger_problems(run_of(STARTED, tok("a", 0), tok("b", 1), END), snapshot()) == []


def test_two_terminal_events_or_none_are_caught():
    assert stream_problems(run_of(STARTED, END, CANCELLED))
    assert stream_problems(run_of(STARTED, tok("a", 0)))


def test_events_after_the_terminal_event_or_out_of_order_are_caught():
    assert stream_problems(run_of(STARTED, END, tok("a", 0)))
    assert stream_problems(run_of(tok("a", 0), STARTED, END))
    assert stream_problems(run_of(STARTED, tok("a", 0), tok("b", 2), END))


def test_ledger_disagreeing_with_the_stream_is_caught():
    run = run_of(STARTED, tok("a", 0), tok("b", 1), END)
    assert ledger_problems(run, snapshot(state="cancelled"))
    assert ledger_problems(run, snapshot(tokens_out=3))
    assert ledger_problems(run, snapshot(text="abc"))
    cancelled = run_of(STARTED, tok("a", 0), CANCELLED, scenario="cancel_delay")
    good = snapshot(
        state="cancelled",
        tokens_out=1,
        text="a",
        stop_reason=None,
        cancel_reason="client",
        error={"code": "CANCELLED", "message": "m", "retriable": False},
        stop_ms=1.0,
        cancel_ms=2.0,
    )
    assert ledger_problems(cancelled, good) == []
    assert ledger_problems(cancelled, {**good, "state": "completed"})  # counted as completed
    assert ledger_problems(cancelled, {**good, "cancel_ms": 3.0})


def test_a_hung_up_job_must_end_cancelled_by_the_disconnect_or_completed():
    run = run_of(STARTED, tok("a", 0), scenario="disconnect", disconnected=True)
    by_disconnect = snapshot(
        state="cancelled",
        tokens_out=1,
        text="a",
        cancel_reason="disconnect",
        error={"code": "CANCELLED", "message": "m", "retriable": False},
    )
    assert stream_problems(run) == []
    assert ledger_problems(run, by_disconnect) == []
    assert ledger_problems(run, snapshot(text="ab")) == []  # it won the race
    assert ledger_problems(run, {**by_disconnect, "cancel_reason": "client"})
    assert ledger_problems(run, {**by_disconnect, "state": "failed"})
    assert ledger_problems(run, {**by_disconnect, "text": "b"})


def test_outcomes():
    assert classify(run_of(STARTED, END)) == "completed"
    assert classify(run_of(CANCELLED)) == "cancelled_queued"
    assert classify(run_of(STARTED, CANCELLED)) == "cancelled_running"
    assert (
        classify(run_of(STARTED, END, scenario="cancel_delay", cancel_statuses=[202]))
        == "completed_despite_cancel"
    )
