"""The front's side of the engine, assembled: its life, its questions, its jobs, its channel.

- `lifecycle`: the engine process's starts, deaths and giving up (a state enum);
- `client`: the tokenize round trip, request numbers mapped to waiting requests;
- `dispatcher`: a thread per slot, each taking a job from the queue to its end, with its deadlines;
- here: the channel's reader, on the event loop (a reader on its socket, every
  frame that has come per wake-up), which turns the engine's messages into the
  job's events (`started`, tokens) and facts, and hands the rest to its part.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.frames import decode
from worker_orcd.channel.messages import (
    Done,
    EngineFailed,
    EngineMessage,
    EngineReady,
    Exit,
    ModelInfo,
    Started,
    Stopped,
    Tokens,
)
from worker_orcd.config import WorkerConfig
from worker_orcd.jobs import events
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.states import Phase
from worker_orcd.log import log_event
from worker_orcd.supervisor.client import EngineClient
from worker_orcd.supervisor.dispatcher import Dispatcher
from worker_orcd.supervisor.engine_process import EngineProcess
from worker_orcd.supervisor.lifecycle import (
    MAX_DEATHS,
    MAX_FAILED_STARTS,
    Engine,
    EngineState,
    EngineUnavailable,
    Lifecycle,
    Spawn,
)

__all__ = [
    "MAX_DEATHS",
    "MAX_FAILED_STARTS",
    "EngineStartFailed",
    "EngineState",
    "EngineSupervisor",
    "EngineUnavailable",
]

EXIT_WAIT_SEC = 30.0  # for the engine to end after `exit` (its run, if any, first)
TOKENIZE_TRIES = 3  # an engine that dies under the request: ask its successor


class EngineStartFailed(Exception):
    """The engine's first start failed (the model could not be loaded); the one-line reason."""


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
        self.board = CancelBoard(config.parallel)  # a word per slot
        self.threads: dict[str, Any] | None = None  # the engine's latest thread choice
        self.kv_cells: int | None = None  # the batch's cells in use after its latest run (slots only)
        # The loop that reads the engines' channels: the HTTP server's, or one of our own.
        self._own_loop: threading.Thread | None = None
        if loop is None:
            loop, self._own_loop = _loop_thread()
        self._loop = loop
        self._cond = threading.Condition()  # the engine's state and its run's, shared by the parts
        self.client = EngineClient(self._loop)
        self.lifecycle = Lifecycle(
            config,
            self.board,
            self._cond,
            spawn=spawn or EngineProcess.start,
            attach=self._attach_soon,
            on_gone=self.client.engine_gone,
            on_given_up=lambda: self.dispatcher.end_waiting_jobs(),
        )
        self.dispatcher = Dispatcher(config, queue, self.board, self.lifecycle)

    # -- start, stop, look ----------------------------------------------------------------

    def start(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Start the engine, wait for its `ready`, then start dispatching.

        Raises EngineStartFailed with the engine's reason if it cannot load the
        model or is not ready within the start deadline, or if `stop_requested()`
        turns true meanwhile (a signal). Not on the event loop: the loop reads
        the engine's answer.
        """
        life = self.lifecycle
        life.start(stop_requested)
        with self._cond:
            self._cond.wait_for(lambda: life.info is not None or life.first_failure is not None)
            failure = life.first_failure
        if failure is not None:
            engine, ended = failure
            if stop_requested():
                raise EngineStartFailed("stopped while the engine was starting")
            if engine is None:
                raise EngineStartFailed(ended)
            if engine.start_timed_out:
                raise EngineStartFailed(f"the engine {ended}")
            raise EngineStartFailed(engine.failed or f"the engine {ended} while starting")
        self.dispatcher.start()

    def notify(self, job: Job | None = None) -> None:
        """A job changed (a cancel was asked for): the dispatcher looks at its clocks again."""
        with self._cond:
            self._cond.notify_all()

    @property
    def state(self) -> EngineState:
        return self.lifecycle.state

    @property
    def reason(self) -> str | None:
        return self.lifecycle.reason

    @property
    def restarts(self) -> int:
        return self.lifecycle.restarts

    @property
    def info(self) -> EngineReady | None:
        """The first engine's `ready`: its model, chunk, extra buffers, …"""
        return self.lifecycle.info

    def slot_jobs(self) -> list[tuple[int, Job]]:
        return self.dispatcher.slot_jobs()

    @property
    def engine_pid(self) -> int | None:
        engine = self.lifecycle.engine
        return engine.process.pid if engine is not None and not engine.gone else None

    @property
    def model(self) -> ModelInfo:
        info = self.lifecycle.info
        assert info is not None, "the engine has not started"
        return info.model

    def health(self) -> dict[str, Any]:
        return {"state": self.state.value, "pid": self.engine_pid, "restarts": self.restarts, "reason": self.reason}

    def stop_jobs(self, reason: CancelReason) -> None:
        """Cancel the job in hand with `reason`, and every job the dispatcher takes from now
        on (one taken from the queue just before it closed included)."""
        self.dispatcher.stop_jobs(reason)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the dispatcher (it ends once the queue is closed and its job has ended)."""
        return self.dispatcher.join(timeout)

    def close(self) -> None:
        """End the engine process: `exit` (it finishes a run first, then frees), else SIGKILL."""
        self.lifecycle.close(_end)
        if self._own_loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._own_loop.join(5.0)

    # -- tokenizing (the engine has the vocabulary) ---------------------------------------

    def tokenize(self, texts: list[tuple[str, bool]], timeout: float = 30.0) -> list[list[int]]:
        """Token ids of each (text, add_special); waits for an engine that is restarting."""
        deadline = time.monotonic() + timeout
        for _ in range(TOKENIZE_TRIES):
            engine = self.lifecycle.ready_engine(deadline)
            request = self.client.tokenize(engine, texts)
            try:
                tokens = request.wait(max(0.0, deadline - time.monotonic()))
            finally:
                self.client.forget(request)
            if tokens is not None:
                return tokens
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
                engine = self.lifecycle.serving_engine()
            if engine is not None:
                request = self.client.tokenize(engine, texts, on_loop=True)
                try:
                    tokens = await request.wait_on_loop(timeout)
                finally:
                    self.client.forget(request)
                if tokens is not None:
                    return tokens
                if not engine.gone:
                    raise EngineUnavailable("the engine did not answer in time")
        return await on_thread(self.tokenize, texts, timeout)

    # -- the channel, read on the event loop -------------------------------------------

    def _attach_soon(self, engine: Engine) -> None:
        self._loop.call_soon_threadsafe(self._attach, engine)

    def _attach(self, engine: Engine) -> None:
        """On the loop: read the engine's channel whenever it has something."""
        self._loop.add_reader(engine.process.channel.fileno(), self._on_readable, engine)

    def _on_readable(self, engine: Engine) -> None:
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
                runs = self.dispatcher.runs
                run = None  # the last token's run: with one slot, every token's
                for frame in frames:
                    message = decode(frame)
                    if isinstance(message, tuple):  # a token: the hot path
                        if run is None or run.number != message[0]:
                            run = runs.get(message[0])
                        if run is not None:
                            job = run.job
                            job.tokens_out = message[1]
                            text = message[2]
                            if not run.events_sent:
                                job.phase = Phase.DECODE  # the prompt is done
                            job.emit(events.token(text, run.events_sent))
                            job.append_text(text)
                            run.events_sent += 1
                    else:
                        self._on_message(engine, message)  # type: ignore[arg-type]
        except Exception as exc:  # a frame that cannot be read, a bug: the channel is lost
            failure, frames = exc, None
        finally:
            engine.handling = False
        if frames is None:
            self._loop.remove_reader(channel.fileno())
            threading.Thread(target=self._lost, args=(engine, failure), name="engine-gone", daemon=True).start()

    def _lost(self, engine: Engine, failure: Exception | None) -> None:
        """Off the loop: the channel has ended. Wait for the process to be reaped (killed
        first if the channel failed while it lives), then count it."""
        how = None
        if failure is not None:
            how = f"lost its channel ({failure!r})"
            log_event("engine_channel_failed", logging.ERROR, pid=engine.process.pid, error=repr(failure))
            engine.process.kill(failure=True)  # its memory is back before its job hears of it
        engine.process.channel.close()
        self.lifecycle.gone(engine, how or engine.process.how_it_ended())

    def _on_message(self, engine: Engine, message: EngineMessage) -> None:
        run = self.dispatcher.runs.get(message.run) if isinstance(message, Started | Stopped | Done) else None
        match message:
            case Started():
                if run is not None:
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
            case Tokens():
                self.client.answered(message)
                return
        with self._cond:
            match message:
                case Stopped():
                    if run is not None:
                        run.stopped_at = message.at
                case Done():
                    if run is not None:
                        run.facts = message.facts
                        if message.threads is not None:
                            self.threads = message.threads
                    if message.kv_cells is not None:
                        self.kv_cells = message.kv_cells
                case EngineReady():
                    self.threads = message.threads
                    self.kv_cells = message.slots["kv_cells"] if message.slots else None
                    self.lifecycle.on_ready(engine, message)
                case EngineFailed():
                    engine.failed = message.message
            self._cond.notify_all()


def _end(engine: Engine) -> None:
    """At close: `exit` (the engine finishes its run, then frees), else SIGKILL."""
    try:
        engine.process.channel.send(Exit())
        engine.process.proc.wait(EXIT_WAIT_SEC)
    except Exception:  # a channel already broken, or an engine that would not go
        engine.process.kill()


def _loop_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """An event loop of the supervisor's own, on a thread, for use without an HTTP server."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="engine-channels", daemon=True)
    thread.start()
    return loop, thread
