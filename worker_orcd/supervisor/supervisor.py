"""The front's side of the engine: dispatch, the channel's reader, deadlines, supervision.

One dispatcher thread takes jobs from the queue one at a time, binds the job's
cancel flag to the engine's word on the cancel board and sends the run; the
event loop reads each engine's channel (a reader on its socket, every frame that
has come per wake-up) and turns the engine's messages into the job's events
(`started`, tokens) and its facts. The dispatcher then has
`jobs.outcomes` decide how the job ends and finishes it. While a job runs, the
dispatcher also keeps two clocks:

- the inference timeout: past it, the job's flag is raised (reason `timeout`);
- the hard deadline: a raised flag the engine has not answered with `done`
  (context freed) within `--cancel-deadline-ms` means the engine is stuck (in a
  CUDA kernel, in a driver call): the process is killed, and once the OS has
  reaped it (its memory, VRAM included, is back) the job ends `CANCELLED` with
  `forced: true`, and a new engine is started.

If the engine process dies on its own, the running job ends at once with
`ENGINE_FAILED` (retriable), unless its flag was raised: then it ends as its
raiser decided, since the process is gone and its memory is back. A job the
dead engine never took waits for the next engine, as queued jobs do. One
long-lived thread, the keeper, starts every engine after the first (a child's
parent-death signal is tied to the thread that spawned it) with a growing
pause, and gives each start a deadline. The engine is given up after
`MAX_DEATHS` deaths within `DEATH_WINDOW_SEC`, or after `MAX_FAILED_STARTS`
starts in a row that never got ready: the worker reports not ready with the
reason, and every waiting and new job gets `ENGINE_UNAVAILABLE`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from worker_orcd.cancel_board import CancelBoard
from worker_orcd.config import WorkerConfig
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events, outcomes
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job, JobState, Outcome, Phase
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.log import log_event
from worker_orcd.supervisor.engine_process import EngineProcess
from worker_orcd.wire import decode

SLOT = 0  # one job runs at a time: one word on the board
MAX_DEATHS = 5
DEATH_WINDOW_SEC = 60.0
MAX_FAILED_STARTS = 3  # restarts in a row that died or timed out before `ready`
RESTART_PAUSES_SEC = (0.0, 0.25, 1.0, 2.0, 4.0)  # after the 1st, 2nd, … death in the window
EXIT_WAIT_SEC = 30.0  # for the engine to end after `exit` (its run, if any, first)
# Past the hard deadline, how long a `done` already in the socket may take to be read.
UNREAD_GRACE_SEC = 1.0
UNREAD_POLL_SEC = 0.005

Spawn = Callable[[WorkerConfig, CancelBoard], EngineProcess]


class EngineUnavailable(Exception):
    """The engine cannot take work now: given up after repeated deaths, or shutting down."""


class EngineStartFailed(Exception):
    """The engine's first start failed (the model could not be loaded); the one-line reason."""


@dataclass(eq=False)
class _Engine:
    process: EngineProcess
    ready: dict[str, Any] | None = None  # its `ready` message
    failed: str | None = None  # its `failed` message
    gone: bool = False
    gone_at: float | None = None  # perf_counter() once reaped
    start_timed_out: bool = False
    handling: bool = False  # its reader has messages in hand or waiting, not yet applied

    def unread(self) -> bool:
        """Whether something the engine sent is still on its way to the front."""
        return self.handling or self.process.channel.pending() > 0


@dataclass(eq=False)
class _Run:
    number: int
    job: Job
    model: str
    started: bool = False  # the engine took it (its `started` came)
    events_sent: int = 0
    stopped_at: float | None = None
    facts: outcomes.RunFacts | None = None


@dataclass(eq=False)
class _Request:
    engine: _Engine
    done: threading.Event = field(default_factory=threading.Event)
    tokens: list[list[int]] | None = None
    answered: asyncio.Future[None] | None = None  # when its caller waits on the channels' loop


class EngineSupervisor:
    def __init__(
        self,
        config: WorkerConfig,
        queue: JobQueue,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.board = CancelBoard(1)
        self.cancel_deadline_sec = config.cancel_deadline_ms / 1000.0
        self.start_deadline_sec = config.engine_start_deadline_sec
        self.state = "starting"  # starting | ready | restarting | failed | stopped
        self.reason: str | None = None  # why no engine serves (restarting, given up)
        self.restarts = 0
        self.info: dict[str, Any] | None = None  # the first engine's `ready`: model, extra buffers
        self.active: Job | None = None
        self.threads: dict[str, Any] | None = None  # the engine's latest thread choice
        self._spawn_process = spawn or EngineProcess.start
        # The loop that reads the engines' channels: the HTTP server's, or one of our own.
        self._loop, self._own_loop = (loop, None) if loop is not None else _loop_thread()
        self._stop_requested: Callable[[], bool] = lambda: False
        self._first_failure: tuple[_Engine | None, str] | None = None  # how the first start failed
        self._engine: _Engine | None = None
        self._run: _Run | None = None
        self._cond = threading.Condition()
        self._spawning = threading.Lock()  # held while an engine process is being made
        self._closing = False
        self._stop_reason: CancelReason | None = None  # every job from now on is cancelled so
        self._deaths: deque[float] = deque()
        self._failed_starts = 0
        self._restart_at: float | None = None  # when the keeper starts the next engine
        self._run_numbers = itertools.count(1)
        self._request_numbers = itertools.count(1)
        self._requests: dict[int, _Request] = {}
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)
        self._keeper = threading.Thread(target=self._keep, name="engine-keeper", daemon=True)

    # -- start, stop, look ----------------------------------------------------------------

    def start(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Start the engine, wait for its `ready`, then start dispatching.

        Raises EngineStartFailed with the engine's reason if it cannot load the
        model or is not ready within the start deadline, or if `stop_requested()`
        turns true meanwhile (a signal). Not on the event loop: the loop reads
        the engine's answer.
        """
        with self._cond:
            self._stop_requested = stop_requested
            self._restart_at = time.monotonic()  # the keeper makes the first engine too
        self._keeper.start()
        with self._cond:
            self._cond.wait_for(lambda: self.info is not None or self._first_failure is not None)
            failure = self._first_failure
        if failure is not None:
            engine, ended = failure
            if stop_requested():
                raise EngineStartFailed("stopped while the engine was starting")
            if engine is None:
                raise EngineStartFailed(ended)
            if engine.start_timed_out:
                raise EngineStartFailed(f"the engine {ended}")
            raise EngineStartFailed(engine.failed or f"the engine {ended} while starting")
        self._dispatcher.start()

    def notify(self, job: Job | None = None) -> None:
        """A job changed (a cancel was asked for): the dispatcher looks at its clocks again."""
        with self._cond:
            self._cond.notify_all()

    @property
    def engine_pid(self) -> int | None:
        engine = self._engine
        return engine.process.pid if engine is not None and not engine.gone else None

    @property
    def model(self) -> dict[str, Any]:
        assert self.info is not None, "the engine has not started"
        return self.info["model"]

    def health(self) -> dict[str, Any]:
        return {"state": self.state, "pid": self.engine_pid, "restarts": self.restarts, "reason": self.reason}

    def stop_jobs(self, reason: CancelReason) -> None:
        """Cancel the job in hand with `reason`, and every job the dispatcher takes from now
        on (one taken from the queue just before it closed included)."""
        with self._cond:
            self._stop_reason = reason
            job = self.active
            self._cond.notify_all()
        if job is not None:
            _cancel(job, reason)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the dispatcher (it ends once the queue is closed and its job has ended)."""
        if not self._dispatcher.is_alive():
            return True
        self._dispatcher.join(timeout)
        return not self._dispatcher.is_alive()

    def close(self) -> None:
        """End the engine process: `exit` (it finishes a run first, then frees), else SIGKILL."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        with self._spawning:  # an engine being made now is ended too
            engine = self._engine
        if engine is not None and not engine.gone:
            try:
                engine.process.channel.send({"kind": "exit"})
                engine.process.proc.wait(EXIT_WAIT_SEC)
            except Exception:  # a channel already broken, or an engine that would not go
                engine.process.kill()
            with self._cond:
                self._cond.wait_for(lambda: engine.gone, 5.0)
        with self._cond:
            self.state = "stopped"
        if self._keeper.is_alive():
            self._keeper.join(5.0)
        if self._own_loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._own_loop.join(5.0)

    # -- tokenizing (the engine has the vocabulary) ---------------------------------------

    def tokenize(self, texts: list[tuple[str, bool]], timeout: float = 30.0) -> list[list[int]]:
        """Token ids of each (text, add_special); waits for an engine that is restarting."""
        deadline = time.monotonic() + timeout
        for _ in range(3):  # an engine that dies under the request: ask its successor
            with self._cond:
                engine = self._ready_engine(deadline)
                number = next(self._request_numbers)
                request = self._requests[number] = _Request(engine)
            try:
                engine.process.channel.send({"kind": "tokenize", "request": number, "texts": texts})
            except OSError:
                pass  # it is going: the reader fails the request
            request.done.wait(max(0.0, deadline - time.monotonic()))
            with self._cond:
                self._requests.pop(number, None)
            if request.tokens is not None:
                return request.tokens
            if not engine.gone:
                break
        raise EngineUnavailable("the engine did not answer in time")

    async def tokenize_on_loop(
        self, texts: list[tuple[str, bool]], on_thread: Callable[..., Any], timeout: float = 30.0
    ) -> list[list[int]]:
        """`tokenize` for a caller on the channels' loop: while an engine is ready the
        request is sent and its answer read there, with no thread between; otherwise
        (restarting, the engine went meanwhile) `tokenize` runs through `on_thread`."""
        if self._loop is asyncio.get_running_loop():
            with self._cond:
                engine = self._serving_engine()
                if engine is not None:
                    number = next(self._request_numbers)
                    request = self._requests[number] = _Request(engine, answered=self._loop.create_future())
            if engine is not None:
                try:
                    engine.process.channel.send({"kind": "tokenize", "request": number, "texts": texts})
                except OSError:
                    pass  # it is going: its end answers the request
                try:
                    await asyncio.wait_for(request.answered, timeout)
                except TimeoutError:
                    pass
                finally:
                    with self._cond:
                        self._requests.pop(number, None)
                if request.tokens is not None:
                    return request.tokens
                if not engine.gone:
                    raise EngineUnavailable("the engine did not answer in time")
        return await on_thread(self.tokenize, texts, timeout)

    def _serving_engine(self) -> _Engine | None:
        """Under the lock: the current engine if it is ready now."""
        engine = self._engine
        if self._closing or self.state == "failed" or engine is None or engine.ready is None or engine.gone:
            return None
        return engine

    def _ready_engine(self, deadline: float) -> _Engine:
        """Under the lock: the current engine once it is ready."""
        while True:
            if self._closing or self.state == "failed":
                raise EngineUnavailable(self.reason or "the worker is shutting down")
            engine = self._serving_engine()
            if engine is not None:
                return engine
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineUnavailable("the engine is restarting; retry shortly")
            self._cond.wait(left)

    # -- the engine process and its reader ------------------------------------------------

    def _spawn(self) -> _Engine:
        config = self.config
        if self.info is not None and config.prefill_chunk is None:
            # A restart keeps the first engine's measured chunk: it starts sooner, and the
            # chunk /health shows stays the one every engine uses.
            config = dataclasses.replace(config, prefill_chunk=self.info["prefill_chunk"]["tokens"])
        engine = _Engine(self._spawn_process(config, self.board))
        with self._cond:
            self._engine = engine
        self._loop.call_soon_threadsafe(self._attach, engine)
        return engine

    def _await_ready(self, engine: _Engine, stop_requested: Callable[[], bool] = lambda: False) -> str:
        """Wait for the engine's `ready`, its failure or its end; past the start deadline it
        is killed. Returns how it ended when it did not get ready."""
        deadline = time.monotonic() + self.start_deadline_sec
        with self._cond:
            while engine.ready is None and engine.failed is None and not engine.gone:
                if stop_requested() or self._closing:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    engine.start_timed_out = True
                    break
                self._cond.wait(min(left, 0.1))
        if engine.ready is not None:
            return "got ready"
        if engine.start_timed_out:
            log_event(
                "engine_start_timeout", logging.ERROR, pid=engine.process.pid, deadline_sec=self.start_deadline_sec
            )
            how = f"was not ready within {self.start_deadline_sec:g} s"
        else:
            how = ""
        if not engine.gone:
            engine.process.kill(failure=True)
        with self._cond:  # its reader has seen the end (the channel closes with the process)
            self._cond.wait_for(lambda: engine.gone, 5.0)
        return how or engine.process.how_it_ended()

    # -- the channel, read on the event loop -------------------------------------------

    def _attach(self, engine: _Engine) -> None:
        """On the loop: read the engine's channel whenever it has something."""
        self._loop.add_reader(engine.process.channel.fileno(), self._on_readable, engine)

    def _on_readable(self, engine: _Engine) -> None:
        """On the loop, each time the channel has bytes: every whole frame that came, in
        order. Tokens go to their job's stream at once, all that came together in one
        wake-up of it; the end of the channel, or a frame that cannot be read, is the
        engine's end."""
        channel = engine.process.channel
        engine.handling = True
        failure: Exception | None = None
        try:
            frames = channel.read_available()
            if frames:
                run = self._run
                for frame in frames:
                    message = decode(frame)
                    if isinstance(message, tuple):  # a token: the hot path
                        if run is not None and run.number == message[0]:
                            job = run.job
                            job.tokens_out = message[1]
                            text = message[2]
                            if not run.events_sent:
                                job.phase = Phase.DECODE  # the prompt is done
                            job.emit(events.token(text, run.events_sent))
                            job.append_text(text)
                            run.events_sent += 1
                    else:
                        self._on_message(engine, message)
                        run = self._run
        except Exception as exc:  # a frame that cannot be read, a bug: the channel is lost
            failure, frames = exc, None
        finally:
            engine.handling = False
        if frames is None:
            self._loop.remove_reader(channel.fileno())
            threading.Thread(target=self._lost, args=(engine, failure), name="engine-gone", daemon=True).start()

    def _lost(self, engine: _Engine, failure: Exception | None) -> None:
        """Off the loop: the channel has ended. Wait for the process to be reaped (killed
        first if the channel failed while it lives), then count it."""
        how = None
        if failure is not None:
            how = f"lost its channel ({failure!r})"
            log_event("engine_channel_failed", logging.ERROR, pid=engine.process.pid, error=repr(failure))
            engine.process.kill(failure=True)  # its memory is back before its job hears of it
        engine.process.channel.close()
        self._on_gone(engine, how or engine.process.how_it_ended())

    def _on_message(self, engine: _Engine, message: dict[str, Any]) -> None:
        kind = message["kind"]
        if kind == "started":
            run = self._run
            if run is not None and run.number == message["run"]:
                run.started = True
                job = run.job
                job.emit(
                    events.started(
                        job.job_id,
                        run.model,
                        job.started_at or "",
                        job.sampling.seed,
                        job.prompt_token_count,
                        job.correlation_id,
                    )
                )
            return
        with self._cond:
            if kind == "tokens":
                request = self._requests.get(message["request"])
                if request is not None:
                    request.tokens = message["tokens"]
                    request.done.set()
                    _wake(request.answered)  # this is the loop
            elif kind in ("stopped", "done"):
                run = self._run
                if run is not None and run.number == message["run"]:
                    if kind == "stopped":
                        run.stopped_at = message["at"]
                    else:
                        run.facts = outcomes.RunFacts.of(message)
                        self.threads = message.get("threads", self.threads)
            elif kind == "ready":
                engine.ready = message
                self.threads = message.get("threads")
                if self.info is None:
                    self.info = message
                if engine is self._engine and not self._closing:
                    self.state = "ready"
                    self.reason = None
                    self._failed_starts = 0
                log_event("engine_ready", pid=message["pid"], context_make_ms=message.get("context_make_ms"))
            elif kind == "failed":
                engine.failed = message["message"]
            self._cond.notify_all()

    def _on_gone(self, engine: _Engine, how: str) -> None:
        """The engine process has ended (and been reaped): count it, and have the next started."""
        if engine.start_timed_out:
            how = f"was not ready within {self.start_deadline_sec:g} s"
        give_up = False
        with self._cond:
            engine.gone = True
            engine.gone_at = time.perf_counter()
            for request in [r for r in self._requests.values() if r.engine is engine]:
                request.done.set()  # no tokens: the caller asks the next engine
                if request.answered is not None:
                    try:
                        self._loop.call_soon_threadsafe(_wake, request.answered)
                    except RuntimeError:  # the loop is closed: nobody waits any more
                        pass
            if self._closing or engine is not self._engine or self.info is None:
                # Closing, an engine already replaced, or the first start (start() reports it).
                self._cond.notify_all()
                return
            if engine.ready is None:
                self._failed_starts += 1
                log_event(
                    "engine_start_failed", logging.ERROR, pid=engine.process.pid, how=how, in_a_row=self._failed_starts
                )
                if self._failed_starts >= MAX_FAILED_STARTS:
                    give_up = True
                    self.reason = (
                        f"the engine process failed to start {self._failed_starts} times in a row "
                        f"(last: {engine.failed or how}); restart the worker once the cause is fixed"
                    )
            elif not engine.process.killed:
                now = time.monotonic()
                self._deaths.append(now)
                while self._deaths and self._deaths[0] < now - DEATH_WINDOW_SEC:
                    self._deaths.popleft()
                log_event("engine_died", logging.ERROR, pid=engine.process.pid, how=how, deaths_in_window=len(self._deaths))
                if len(self._deaths) >= MAX_DEATHS:
                    give_up = True
                    self.reason = (
                        f"the engine process died {len(self._deaths)} times within {DEATH_WINDOW_SEC:g} s "
                        f"(last: {how}); restart the worker once the cause is fixed"
                    )
            if give_up:
                self.state = "failed"
                log_event("engine_given_up", logging.CRITICAL, reason=self.reason)
            else:
                self.state = "restarting"
                failures = max(len(self._deaths), self._failed_starts)
                pause = 0.0 if engine.process.killed and engine.ready is not None else RESTART_PAUSES_SEC[
                    min(max(failures, 1), len(RESTART_PAUSES_SEC)) - 1
                ]
                self.reason = f"the engine process {how}; a new one is starting"
                self._restart_at = time.monotonic() + pause
            self._cond.notify_all()
        if give_up:
            self._end_waiting_jobs()

    def _keep(self) -> None:
        """The keeper: starts each engine (the first, then one after each end) once its pause
        is over, and holds it to the start deadline. It lives until close(): the engines it
        started die with it (their parent-death signal), so not before close() has ended them."""
        while self._next_start():
            with self._spawning:
                if self._closing:
                    continue
                if self.info is not None:
                    self.restarts += 1
                try:
                    engine = self._spawn()
                except OSError as exc:
                    log_event("engine_start_failed", logging.ERROR, error=str(exc))
                    with self._cond:
                        if self.info is None:
                            self._first_failure = (None, f"the engine process could not be started: {exc}")
                        self.state = "failed"
                        self.reason = f"the engine process could not be started: {exc}"
                        self._cond.notify_all()
                    self._end_waiting_jobs()
                    continue
            ended = self._await_ready(engine, self._stop_requested)
            with self._cond:
                if engine.ready is None and self.info is None:
                    self._first_failure = (engine, ended)  # start() reports it; no restart
                    self._cond.notify_all()
        with self._cond:
            self._cond.wait_for(lambda: self._engine is None or self._engine.gone)

    def _next_start(self) -> bool:
        """Wait until an engine is wanted and its pause is over (True), or closing (False)."""
        with self._cond:
            while not self._closing:
                if self._restart_at is None:
                    self._cond.wait()
                    continue
                left = self._restart_at - time.monotonic()
                if left <= 0:
                    self._restart_at = None
                    return True
                self._cond.wait(left)
            return False

    def _end_waiting_jobs(self) -> None:
        for job in self.queue.drain():
            job.finish(self._unavailable(), only_from=JobState.QUEUED)

    def _unavailable(self) -> Outcome:
        return outcomes.failed(ErrorCode.ENGINE_UNAVAILABLE, self.reason or "the engine is unavailable")

    # -- the dispatcher ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            job = self.queue.take()
            if job is None:
                return
            # Active from the moment it leaves the queue, so a shutdown finds it.
            with self._cond:
                self.active = job
                stop = self._stop_reason
            if stop is not None:
                _cancel(job, stop)
            try:
                self._carry(job)
            except Exception as exc:  # never lose the thread, never leave a job without its end
                log_event("job_internal_error", job_id=job.job_id, correlation_id=job.correlation_id, error=repr(exc))
                job.finish(outcomes.failed(ErrorCode.INTERNAL, f"inference failed: {exc}", tokens_out=job.tokens_out))
            finally:
                with self._cond:
                    self.active = None

    def _carry(self, job: Job) -> None:
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
            run = _Run(next(self._run_numbers), job, self.model["name"])
            with self._cond:
                self._run = run
            flag.bind(self.board.address(SLOT))
            try:
                try:
                    engine.process.channel.send(
                        {
                            "kind": "run",
                            "run": run.number,
                            "job_id": job.job_id,
                            "prompt_tokens": job.prompt_tokens,
                            "sampling": asdict(job.sampling),
                            "slot": SLOT,
                        }
                    )
                except OSError:
                    pass  # the engine is going: its reader reports it
                outcome = self._await(run, engine)
            finally:
                flag.unbind()
                with self._cond:
                    self._run = None
            if outcome is not None:
                self._finish(job, outcome, run)
                return
            log_event("job_waits_for_engine", job_id=job.job_id, correlation_id=job.correlation_id)

    def _engine_for(self, job: Job) -> _Engine | None:
        """A ready engine to run the job on; None when there will be none (given up, closing),
        or once the job has ended or, having started, was cancelled while it waited."""
        with self._cond:
            while True:
                if job.state.terminal or self.state == "failed" or self._closing:
                    return None
                if job.state is JobState.RUNNING and job.cancel_flag.raised:
                    return None
                engine = self._engine
                if engine is not None and engine.ready is not None and not engine.gone:
                    return engine
                self._cond.wait()

    def _await(self, run: _Run, engine: _Engine) -> Outcome | None:
        """Wait for the run's facts, the engine's death, or a deadline. None: the engine died
        before it took the run, which may then go to the next engine."""
        job, flag = run.job, run.job.cancel_flag
        timeout_at = (job.started_mono or time.perf_counter()) + self.config.inference_timeout_sec
        unread_until: float | None = None
        with self._cond:
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
                            self._cond.wait(UNREAD_POLL_SEC)
                            continue
                        break
                self._cond.wait(wake - now)
        # The engine did not confirm the stop in time: it is stuck. Kill it and wait for the
        # OS to take it back; its reader has the keeper start the next engine.
        log_event("engine_forced", logging.WARNING, job_id=job.job_id, pid=engine.process.pid, deadline_ms=self.config.cancel_deadline_ms)
        engine.process.kill()
        return outcomes.cancelled(flag, tokens_out=job.tokens_out, stopped_at=time.perf_counter(), forced=True)

    def _finish(self, job: Job, outcome: Outcome, run: _Run | None) -> None:
        phase = "prompt" if job.phase is Phase.PROMPT else "decode"
        if run is not None and run.facts is not None:  # the last tokens may have carried no text of their own
            job.tokens_out = run.facts.tokens_out
        job.finish(outcome)
        data = outcome.event.data
        if outcome.stop_ms is not None:  # a stop at the raised flag
            fields = {
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


def _cancel(job: Job, reason: CancelReason) -> None:
    """Raise the job's flag; a job still queued ends at once (it never runs)."""
    if job.request_cancel(reason) is Phase.QUEUED:
        job.finish_cancelled_unstarted()


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _loop_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """An event loop of the supervisor's own, on a thread, for use without an HTTP server."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="engine-channels", daemon=True)
    thread.start()
    return loop, thread

