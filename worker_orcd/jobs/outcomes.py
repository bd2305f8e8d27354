"""How a job ends: the one place that turns what happened into a terminal state and event.

The engine reports facts (it stopped at a raised flag, it reached a stop
reason, a decode failed, the process died, the front had to kill it); these
functions decide the outcome, from the facts and the job's cancel flag. An
engine stop at a raised flag is always the raiser's outcome (client,
disconnect, timeout, shutdown), never a failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from worker_orcd.channel.messages import RunFacts
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events
from worker_orcd.jobs.cancel_flag import CancelFlag, CancelReason
from worker_orcd.jobs.events import Event
from worker_orcd.jobs.states import JobState

ENGINE_FAILED_MESSAGE = "the engine process died during this job; retry it"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended: its terminal state and the event that says so."""

    state: JobState
    event: Event
    stop_reason: str | None = None
    error_code: ErrorCode | None = None
    stop_ms: float | None = None
    cancel_ms: float | None = None
    forced: bool = False  # a cancel the engine did not confirm in time: the process was killed


def cancel_error(reason: CancelReason) -> tuple[ErrorCode, str, bool]:
    """The terminal error a cancel reason produces: (code, message, retriable)."""
    if reason is CancelReason.TIMEOUT:
        return ErrorCode.INFERENCE_TIMEOUT, "Job exceeded the inference timeout", True
    if reason is CancelReason.SHUTDOWN:
        return ErrorCode.WORKER_SHUTDOWN, "Worker is shutting down; retry on another worker", True
    return ErrorCode.CANCELLED, events.CANCELLED_MESSAGE, False


def elapsed_ms(since: float | None, until: float | None = None) -> float:
    """Milliseconds from a perf_counter() reading until `until` (default now); 0 without one."""
    if since is None:
        return 0.0
    end = time.perf_counter() if until is None else until
    return round(max(0.0, end - since) * 1000.0, 3)


def of_run(flag: CancelFlag, facts: RunFacts) -> Outcome:
    """The end of a job the engine ran: completed, cancelled as its raiser decided, or failed."""
    if facts.stopped_at is not None:
        return cancelled(flag, tokens_out=facts.tokens_out, stopped_at=facts.stopped_at)
    if facts.error_code is not None:
        return failed(facts.error_code, facts.error_message, tokens_out=facts.tokens_out)
    assert facts.stop_reason is not None
    reason = facts.stop_reason.value
    return Outcome(JobState.COMPLETED, events.end(facts.tokens_out, facts.decode_ms, reason), stop_reason=reason)


def cancelled(flag: CancelFlag, *, tokens_out: int, stopped_at: float | None, forced: bool = False) -> Outcome:
    """A stop at the raised flag: `stop_ms` from the raise to the stop, `cancel_ms` to now
    (memory already freed). A queued job stops at 0."""
    code, message, retriable = cancel_error(flag.reason or CancelReason.CLIENT)
    raised_at = flag.raised_at
    stop_ms = 0.0 if stopped_at is None else elapsed_ms(raised_at, stopped_at)
    cancel_ms = elapsed_ms(raised_at)
    extra = {"forced": True} if forced else {}
    return Outcome(
        JobState.CANCELLED if code is ErrorCode.CANCELLED else JobState.FAILED,
        events.error(code, message, retriable, tokens_out=tokens_out, stop_ms=stop_ms, cancel_ms=cancel_ms, **extra),
        error_code=code,
        stop_ms=stop_ms,
        cancel_ms=cancel_ms,
        forced=forced,
    )


def failed(code: ErrorCode, message: str, *, tokens_out: int = 0) -> Outcome:
    """An engine failure: retriable unless it is a bug of ours (INTERNAL)."""
    return Outcome(
        JobState.FAILED,
        events.error(code, message, code is not ErrorCode.INTERNAL, tokens_out=tokens_out),
        error_code=code,
    )


def engine_failed(message: str = ENGINE_FAILED_MESSAGE, *, tokens_out: int = 0) -> Outcome:
    return failed(ErrorCode.ENGINE_FAILED, message, tokens_out=tokens_out)
