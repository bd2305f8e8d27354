"""A job: one `POST /execute` from acceptance to its single terminal event.

States: queued → running → completed | cancelled | failed, and queued → cancelled
| failed (cancelled or shut down before it ran). Every transition happens under
the job's lock, and `finish` is the only way into a terminal state: whoever wins
that call emits the terminal event, so no job ever gets two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker_orcd.api import records
from worker_orcd.channel.messages import Sampling
from worker_orcd.jobs import outcomes
from worker_orcd.jobs.cancel_flag import CancelFlag, CancelReason
from worker_orcd.jobs.events import Event, EventSink
from worker_orcd.jobs.outcomes import Outcome
from worker_orcd.jobs.states import JobState, Phase

__all__ = ["Job", "JobState", "Outcome", "Phase", "Sampling", "now_iso"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(eq=False)
class Job:
    job_id: str
    prompt_tokens: list[int]
    sampling: Sampling
    model: str
    correlation_id: str | None = None
    tenant: str = ""
    sink: EventSink | None = None
    on_change: Callable[[Job], None] | None = None  # after any change: may see a later state
    on_finish: Callable[[Job], None] | None = None  # once, after the winning `finish`

    state: JobState = JobState.QUEUED
    phase: Phase = Phase.QUEUED
    cancel_flag: CancelFlag = field(default_factory=CancelFlag)
    queued_at: str = field(default_factory=now_iso)
    started_at: str | None = None
    ended_at: str | None = None
    cancel_requested_at: str | None = None
    canceled_at: str | None = None
    tokens_out: int = 0
    outcome: Outcome | None = None
    started_mono: float | None = None  # perf_counter() readings, for durations
    ended_mono: float | None = None
    _text: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        self.prompt_token_count = len(self.prompt_tokens)

    # -- what the dispatcher calls -----------------------------------------------------

    def start(self) -> bool:
        """queued → running; False when the job ended while it waited."""
        with self._lock:
            if self.state is not JobState.QUEUED:
                return False
            self.state = JobState.RUNNING
            self.phase = Phase.PROMPT
            self.started_at = now_iso()
            self.started_mono = time.perf_counter()
        self._changed()
        return True

    def emit(self, event: Event) -> None:
        """A non-terminal event; terminal ones go through `finish`. Under the job's lock, as
        `finish` emits and clears the sink: nothing is emitted after the terminal event."""
        with self._lock:
            if self.sink is not None:
                self.sink(event)

    def append_text(self, text: str) -> None:
        self._text.append(text)

    # -- what anyone calls --------------------------------------------------------------

    def request_cancel(
        self, reason: CancelReason, *, requested_at: str | None = None, raised_at: float | None = None
    ) -> Phase:
        """Raise the cancel flag unless the job has ended; returns the phase it hit.

        A finished job stays as it finished: a late cancel changes nothing.
        `requested_at`/`raised_at` date a cancel that came before the job did.
        """
        with self._lock:
            phase = self.phase
            if self.state.terminal:
                return Phase.FINISHED
            raised = self.cancel_flag.raise_(reason, at=raised_at)
            if raised:
                self.cancel_requested_at = requested_at or now_iso()
        if raised:
            self._changed()
        return phase

    def finish(self, outcome: Outcome, *, only_from: JobState | None = None) -> bool:
        """Enter a terminal state and emit its event; only the first call wins.

        `only_from` makes the call lose unless the job is in that state, so a
        queued job's cancel cannot end a job the dispatcher just started.
        """
        with self._lock:
            if self.state.terminal or (only_from is not None and self.state is not only_from):
                return False
            self.state = outcome.state
            self.phase = Phase.FINISHED
            self.outcome = outcome
            self.ended_at = now_iso()
            self.ended_mono = time.perf_counter()
            if outcome.state is JobState.CANCELLED:
                self.canceled_at = self.ended_at
            # Emitted under the lock so nothing can slip in after the terminal event.
            if self.sink is not None:
                self.sink(outcome.event)
            self._done.set()
            # A finished job stays in memory for lookups; what only running needed goes.
            self.prompt_tokens = []
            self.sink = None
        self._changed()
        if self.on_finish is not None:
            self.on_finish(self)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended; False on timeout."""
        return self._done.wait(timeout)

    def finish_cancelled_unstarted(self) -> bool:
        """End a cancelled job that is still queued; False if it has started or ended."""
        return self.finish(
            outcomes.cancelled(self.cancel_flag, tokens_out=0, stopped_at=None), only_from=JobState.QUEUED
        )

    # -- views ---------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_flag.raised

    @property
    def duration_ms(self) -> float | None:
        """Running time, start to terminal event; None unless it ran and ended."""
        if self.started_mono is None or self.ended_mono is None:
            return None
        return (self.ended_mono - self.started_mono) * 1000.0

    def snapshot(self) -> records.JobRecord:
        """The job as `GET /jobs/{id}` shows it."""
        return records.from_job(self)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)
