"""The dispatcher: a thread per slot, each carrying one job at a time from the queue to its end.

With `--parallel N` the engine runs up to N jobs at once, each in its slot, and each
slot has its own word on the cancel board and its own thread here: it takes the next
job in turn from the queue, binds the job's cancel flag to its slot's word and sends
the run; the channel's reader fills in the run (`started`, tokens, `stopped`, `done`).
Then `jobs.outcomes` decides how the job ends and the slot's thread finishes it. No
slot's state decides another slot's job. While a job runs its thread keeps two clocks:

- the inference timeout: past it, the job's flag is raised (reason `timeout`);
- the hard deadline: a raised flag the engine has not answered with `done`
  (context freed) within `--cancel-deadline-ms` means the engine is stuck (in a
  CUDA kernel, in a driver call): the process is killed, and once the OS has
  reaped it (its memory, VRAM included, is back) the job ends `CANCELLED` with
  `forced: true`, and a new engine is started.

If the engine process dies on its own, or is killed for one slot's stuck cancel,
every running job ends at once with `ENGINE_FAILED` (retriable), unless its flag was
raised: then it ends as its raiser decided, since the process is gone and its memory
is back. A job the dead engine never took waits for the next engine, as queued jobs do.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.messages import RunFacts, RunRequest
from worker_orcd.config import WorkerConfig
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import outcomes
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job
from worker_orcd.jobs.outcomes import Outcome
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.states import JobState, Phase
from worker_orcd.log import log_event
from worker_orcd.supervisor.lifecycle import Engine, EngineState, Lifecycle

# Past the hard deadline, how long a `done` already in the socket may take to be read.
UNREAD_GRACE_SEC = 1.0
UNREAD_POLL_SEC = 0.005


@dataclass(eq=False)
class Run:
    """A job on an engine, as the channel's reader fills it in."""

    number: int
    job: Job
    model: str
    slot: int
    started: bool = False  # the engine took it (its `started` came)
    events_sent: int = 0
    stopped_at: float | None = None
    facts: RunFacts | None = None


class Dispatcher:
    def __init__(self, config: WorkerConfig, queue: JobQueue, board: CancelBoard, lifecycle: Lifecycle) -> None:
        self.config = config
        self.queue = queue
        self.board = board
        self.lifecycle = lifecycle
        self.cond = lifecycle.cond
        self.cancel_deadline_sec = config.cancel_deadline_ms / 1000.0
        self.slots = board.slots
        # Each slot's job, from the moment it leaves the queue, so a shutdown finds it.
        self.running: dict[int, Job] = {}
        # The runs in hand by number, for the channel's reader (which reads without the lock:
        # an entry is added before its run is sent and removed after its `done` was read).
        self.runs: dict[int, Run] = {}
        self._stop_reason: CancelReason | None = None  # every job from now on is cancelled so
        self._run_numbers = itertools.count(1)
        self._threads = [
            threading.Thread(target=self._dispatch, args=(slot,), name=f"dispatcher-{slot}", daemon=True)
            for slot in range(self.slots)
        ]

    def slot_jobs(self) -> list[tuple[int, Job]]:
        """Each busy slot and its job, by slot. A job that has ended holds none: the engine
        freed its cells before its end, and what its thread does after the end is not the
        slot's (a caller that has its terminal event must not find it running)."""
        with self.cond:
            return sorted((slot, job) for slot, job in self.running.items() if not job.state.terminal)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the slots' threads (each ends once the queue is closed and its job has ended)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def stop_jobs(self, reason: CancelReason) -> None:
        """Cancel the jobs in hand with `reason`, and every job taken from now on."""
        with self.cond:
            self._stop_reason = reason
            jobs = list(self.running.values())
            self.cond.notify_all()
        for job in jobs:
            cancel(job, reason)

    def end_waiting_jobs(self) -> None:
        """No engine will serve: every queued job ends ENGINE_UNAVAILABLE."""
        for job in self.queue.drain():
            job.finish(self._unavailable(), only_from=JobState.QUEUED)

    def _unavailable(self) -> Outcome:
        return outcomes.failed(ErrorCode.ENGINE_UNAVAILABLE, self.lifecycle.reason or "the engine is unavailable")

    # -- the thread ------------------------------------------------------------------------

    def _dispatch(self, slot: int) -> None:
        while True:
            job = self.queue.take()
            if job is None:
                return
            with self.cond:
                self.running[slot] = job
                stop = self._stop_reason
            if stop is not None:
                cancel(job, stop)
            try:
                self._carry(job, slot)
            except Exception as exc:  # never lose the thread, never leave a job without its end
                log_event("job_internal_error", job_id=job.job_id, correlation_id=job.correlation_id, error=repr(exc))
                job.finish(outcomes.failed(ErrorCode.INTERNAL, f"inference failed: {exc}", tokens_out=job.tokens_out))
            finally:
                with self.cond:
                    del self.running[slot]

    def _carry(self, job: Job, slot: int) -> None:
        """Run the job on the engine until it has ended; a job the engine never took (it died
        first) waits for the next engine."""
        flag = job.cancel_flag
        while True:
            engine = self._engine_for(job)
            if job.state.terminal:
                return
            if job.state is JobState.RUNNING and flag.raised:  # while it waited for a new engine
                self._finish(job, outcomes.cancelled(flag, tokens_out=0, stopped_at=None), None)
                return
            if engine is None:
                job.finish(self._unavailable())
                return
            if job.state is JobState.QUEUED and not job.start():
                return
            assert engine.ready is not None
            with self.cond:
                run = Run(next(self._run_numbers), job, engine.ready.model.name, slot)
                self.runs[run.number] = run
            flag.bind(self.board.address(slot))
            try:
                try:
                    engine.process.channel.send(
                        RunRequest(run.number, job.job_id, job.prompt_tokens, job.sampling, slot)
                    )
                except OSError:
                    pass  # the engine is going: its reader reports it
                outcome = self._await(run, engine)
            finally:
                flag.unbind()
                with self.cond:
                    del self.runs[run.number]
            if outcome is not None:
                self._finish(job, outcome, run)
                return
            log_event("job_waits_for_engine", job_id=job.job_id, correlation_id=job.correlation_id)

    def _engine_for(self, job: Job) -> Engine | None:
        """A ready engine to run the job on; None when there will be none (given up, closing),
        or once the job has ended or, having started, was cancelled while it waited."""
        life = self.lifecycle
        with self.cond:
            while True:
                if job.state.terminal or life.state is EngineState.FAILED or life.closing:
                    return None
                if job.state is JobState.RUNNING and job.cancel_flag.raised:
                    return None
                engine = life.engine
                if engine is not None and engine.ready is not None and not engine.gone:
                    return engine
                self.cond.wait()

    def _await(self, run: Run, engine: Engine) -> Outcome | None:
        """Wait for the run's facts, the engine's death, or a deadline. None: the engine died
        before it took the run, which may then go to the next engine."""
        job, flag = run.job, run.job.cancel_flag
        timeout_at = (job.started_mono or time.perf_counter()) + self.config.inference_timeout_sec
        unread_until: float | None = None
        with self.cond:
            while True:
                if run.facts is not None:
                    return outcomes.of_run(flag, run.facts)
                if engine.gone:
                    if flag.raised:
                        # Stopped (or not) and then dead: the raiser's outcome, with its memory back.
                        stopped_at = run.stopped_at if run.stopped_at is not None else engine.gone_at
                        return outcomes.cancelled(flag, tokens_out=job.tokens_out, stopped_at=stopped_at)
                    if not run.started:
                        return None
                    return outcomes.engine_failed(tokens_out=job.tokens_out)
                now = time.perf_counter()
                if not flag.raised:
                    if now >= timeout_at:
                        job.request_cancel(CancelReason.TIMEOUT)  # notifies us through the manager
                        continue
                    wake = timeout_at
                else:
                    assert flag.raised_at is not None
                    wake = flag.raised_at + self.cancel_deadline_sec
                    if now >= wake:
                        # A `done` already sent but not yet read is a confirmation, not a hang.
                        if engine.unread() and (unread_until is None or now < unread_until):
                            if unread_until is None:
                                unread_until = now + UNREAD_GRACE_SEC
                            self.cond.wait(UNREAD_POLL_SEC)
                            continue
                        break
                self.cond.wait(wake - now)
        # The engine did not confirm the stop in time: it is stuck. Kill it and wait for the
        # OS to take it back; its reader has the keeper start the next engine.
        log_event(
            "engine_forced",
            logging.WARNING,
            job_id=job.job_id,
            pid=engine.process.pid,
            deadline_ms=self.config.cancel_deadline_ms,
        )
        engine.process.kill()
        return outcomes.cancelled(flag, tokens_out=job.tokens_out, stopped_at=time.perf_counter(), forced=True)

    def _finish(self, job: Job, outcome: Outcome, run: Run | None) -> None:
        phase = "prompt" if job.phase is Phase.PROMPT else "decode"
        if run is not None and run.facts is not None:  # the last tokens may have carried no text of their own
            job.tokens_out = run.facts.tokens_out
        job.finish(outcome)
        data = outcome.event.data
        if outcome.stop_ms is not None:  # a stop at the raised flag
            fields: dict[str, Any] = {
                "job_id": job.job_id,
                "correlation_id": job.correlation_id,
                "reason": (job.cancel_flag.reason or CancelReason.CLIENT).value,
                "phase": phase,
                "stop_ms": outcome.stop_ms,
            }
            if outcome.forced:
                fields["forced"] = True
            log_event("cancel_ack", **fields)
            log_event("cancelled", **fields, tokens_out=job.tokens_out, cancel_ms=outcome.cancel_ms)
        elif outcome.state is JobState.FAILED:
            log_event(
                "job_failed",
                job_id=job.job_id,
                correlation_id=job.correlation_id,
                code=data.get("code"),
                error=data.get("message"),
            )


def cancel(job: Job, reason: CancelReason) -> None:
    """Raise the job's flag; a job still queued ends at once (it never runs)."""
    if job.request_cancel(reason) is Phase.QUEUED:
        job.finish_cancelled_unstarted()
