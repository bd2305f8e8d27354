"""Jobs with recording sinks and ready-made outcomes, for tests that run no model."""

from __future__ import annotations

import threading
from typing import Any

from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events
from worker_orcd.jobs.events import Event
from worker_orcd.jobs.job import Job, JobState, Outcome, Sampling

SAMPLING = Sampling(max_tokens=8, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=1)


class RecordingSink:
    """Collects a job's events; safe to call from any thread, like the real channel."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def terminal(self) -> list[Event]:
        return [e for e in self.events if e.terminal]


def make_job(job_id: str = "job-1", tenant: str = "", **kwargs: Any) -> tuple[Job, RecordingSink]:
    sink = RecordingSink()
    job = Job(
        job_id=job_id,
        prompt_tokens=[1, 2, 3],
        sampling=SAMPLING,
        model="test-model",
        correlation_id="corr-1",
        tenant=tenant,
        sink=sink,
        **kwargs,
    )
    return job, sink


def completed(tokens_out: int = 3) -> Outcome:
    return Outcome(JobState.COMPLETED, events.end(tokens_out, 1.0, "max_tokens"), stop_reason="max_tokens")


def cancelled(tokens_out: int = 1) -> Outcome:
    return Outcome(
        JobState.CANCELLED,
        events.error(
            ErrorCode.CANCELLED,
            events.CANCELLED_MESSAGE,
            False,
            tokens_out=tokens_out,
            stop_ms=0.1,
            cancel_ms=0.2,
        ),
        error_code=ErrorCode.CANCELLED,
        stop_ms=0.1,
        cancel_ms=0.2,
    )


def failed() -> Outcome:
    return Outcome(
        JobState.FAILED,
        events.error(ErrorCode.INTERNAL, "boom", False, tokens_out=0),
        error_code=ErrorCode.INTERNAL,
    )
