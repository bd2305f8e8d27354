"""The engine process's life: its starts, its `ready`, its deaths, and giving it up.

One long-lived thread, the keeper, starts every engine (a child's parent-death
signal is tied to the thread that spawned it) once its pause is over, and gives
each start a deadline. A death is counted; the next engine starts after a pause
that grows with the deaths in the window. The engine is given up after
`MAX_DEATHS` deaths within `DEATH_WINDOW_SEC`, or after `MAX_FAILED_STARTS`
starts in a row that never got ready: the state is `failed`, with the reason.

The condition it is given is shared with the dispatcher, which waits on the
engine's state (ready, gone) as much as on its run's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.messages import EngineReady
from worker_orcd.config import WorkerConfig
from worker_orcd.log import log_event
from worker_orcd.supervisor.engine_process import EngineProcess

MAX_DEATHS = 5
DEATH_WINDOW_SEC = 60.0
MAX_FAILED_STARTS = 3  # restarts in a row that died or timed out before `ready`
RESTART_PAUSES_SEC = (0.0, 0.25, 1.0, 2.0, 4.0)  # after the 1st, 2nd, … death in the window

Spawn = Callable[[WorkerConfig, CancelBoard], EngineProcess]


class EngineState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"  # given up: no engine will serve
    STOPPED = "stopped"


class EngineUnavailable(Exception):
    """The engine cannot take work now: given up after repeated deaths, or shutting down."""


@dataclass(eq=False)
class Engine:
    """One engine process as the front knows it."""

    process: EngineProcess
    ready: EngineReady | None = None
    failed: str | None = None  # its `failed` message
    gone: bool = False
    gone_at: float | None = None  # perf_counter() once reaped
    start_timed_out: bool = False
    handling: bool = False  # its reader has messages in hand or waiting, not yet applied

    def unread(self) -> bool:
        """Whether something the engine sent is still on its way to the front."""
        return self.handling or self.process.channel.pending() > 0


class Lifecycle:
    def __init__(
        self,
        config: WorkerConfig,
        board: CancelBoard,
        cond: threading.Condition,
        *,
        spawn: Spawn,
        attach: Callable[[Engine], None],
        on_gone: Callable[[Engine], None],
        on_given_up: Callable[[], None],
    ) -> None:
        """`attach`: have the new engine's channel read; `on_gone`: an engine has ended (called
        under `cond`, once it is marked gone); `on_given_up`: no engine will serve any more."""
        self.config = config
        self.board = board
        self.cond = cond
        self.start_deadline_sec = config.engine_start_deadline_sec
        self.state = EngineState.STARTING
        self.reason: str | None = None  # why no engine serves (restarting, given up)
        self.restarts = 0
        self.info: EngineReady | None = None  # the first engine's `ready`
        self.engine: Engine | None = None  # the current one
        self.closing = False
        self.first_failure: tuple[Engine | None, str] | None = None  # how the first start failed
        self.stop_requested: Callable[[], bool] = lambda: False
        self._spawn_process = spawn
        self._attach = attach
        self._on_gone = on_gone
        self._on_given_up = on_given_up
        self._spawning = threading.Lock()  # held while an engine process is being made
        self._deaths: deque[float] = deque()
        self._failed_starts = 0
        self._restart_at: float | None = None  # when the keeper starts the next engine
        self._keeper = threading.Thread(target=self._keep, name="engine-keeper", daemon=True)

    # -- what the supervisor asks (under the condition unless said) --------------------------

    def start(self, stop_requested: Callable[[], bool]) -> None:
        """Have the keeper make the first engine (not under the condition)."""
        with self.cond:
            self.stop_requested = stop_requested
            self._restart_at = time.monotonic()  # the keeper makes the first engine too
        self._keeper.start()

    def serving_engine(self) -> Engine | None:
        """Under the condition: the current engine if it is ready now."""
        engine = self.engine
        if self.closing or self.state is EngineState.FAILED or engine is None or engine.ready is None or engine.gone:
            return None
        return engine

    def ready_engine(self, deadline: float) -> Engine:
        """The current engine once it is ready (waits; not under the condition)."""
        with self.cond:
            while True:
                if self.closing or self.state is EngineState.FAILED:
                    raise EngineUnavailable(self.reason or "the worker is shutting down")
                engine = self.serving_engine()
                if engine is not None:
                    return engine
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineUnavailable("the engine is restarting; retry shortly")
                self.cond.wait(left)

    def on_ready(self, engine: Engine, message: EngineReady) -> None:
        """Under the condition, on the loop: the engine said `ready`."""
        engine.ready = message
        if self.info is None:
            self.info = message
        if engine is self.engine and not self.closing:
            self.state = EngineState.READY
            self.reason = None
            self._failed_starts = 0
        log_event("engine_ready", pid=message.pid, context_make_ms=message.context_make_ms)

    def close(self, on_running: Callable[[Engine], None]) -> None:
        """No more engines; `on_running` ends the current one if it lives (not under the
        condition), then the keeper is joined."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        with self._spawning:  # an engine being made now is ended too
            engine = self.engine
        if engine is not None and not engine.gone:
            on_running(engine)
            with self.cond:
                self.cond.wait_for(lambda: engine.gone, 5.0)
        with self.cond:
            self.state = EngineState.STOPPED
        if self._keeper.is_alive():
            self._keeper.join(5.0)

    # -- the keeper --------------------------------------------------------------------------

    def _keep(self) -> None:
        """Starts each engine (the first, then one after each end) once its pause is over, and
        holds it to the start deadline. It lives until close(): the engines it started die
        with it (their parent-death signal), so not before close() has ended them."""
        while self._next_start():
            with self._spawning:
                if self.closing:
                    continue
                if self.info is not None:
                    self.restarts += 1
                try:
                    engine = self._spawn()
                except OSError as exc:
                    log_event("engine_start_failed", logging.ERROR, error=str(exc))
                    with self.cond:
                        if self.info is None:
                            self.first_failure = (None, f"the engine process could not be started: {exc}")
                        self.state = EngineState.FAILED
                        self.reason = f"the engine process could not be started: {exc}"
                        self.cond.notify_all()
                    self._on_given_up()
                    continue
            ended = self._await_ready(engine, self.stop_requested)
            with self.cond:
                if engine.ready is None and self.info is None:
                    self.first_failure = (engine, ended)  # start() reports it; no restart
                    self.cond.notify_all()
        with self.cond:
            self.cond.wait_for(lambda: self.engine is None or self.engine.gone)

    def _next_start(self) -> bool:
        """Wait until an engine is wanted and its pause is over (True), or closing (False)."""
        with self.cond:
            while not self.closing:
                if self._restart_at is None:
                    self.cond.wait()
                    continue
                left = self._restart_at - time.monotonic()
                if left <= 0:
                    self._restart_at = None
                    return True
                self.cond.wait(left)
            return False

    def _spawn(self) -> Engine:
        config = self.config
        if self.info is not None and config.prefill_chunk is None:
            # A restart keeps the first engine's measured chunk: it starts sooner, and the
            # chunk /health shows stays the one every engine uses.
            config = dataclasses.replace(config, prefill_chunk=self.info.prefill_chunk.tokens)
        engine = Engine(self._spawn_process(config, self.board))
        with self.cond:
            self.engine = engine
        self._attach(engine)
        return engine

    def _await_ready(self, engine: Engine, stop_requested: Callable[[], bool]) -> str:
        """Wait for the engine's `ready`, its failure or its end; past the start deadline it
        is killed. Returns how it ended when it did not get ready."""
        deadline = time.monotonic() + self.start_deadline_sec
        with self.cond:
            while engine.ready is None and engine.failed is None and not engine.gone:
                if stop_requested() or self.closing:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    engine.start_timed_out = True
                    break
                self.cond.wait(min(left, 0.1))
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
        with self.cond:  # its reader has seen the end (the channel closes with the process)
            self.cond.wait_for(lambda: engine.gone, 5.0)
        return how or engine.process.how_it_ended()

    # -- an end --------------------------------------------------------------------------------

    def gone(self, engine: Engine, how: str) -> None:
        """The engine process has ended (and been reaped): count it, and have the next started."""
        if engine.start_timed_out:
            how = f"was not ready within {self.start_deadline_sec:g} s"
        give_up = False
        with self.cond:
            engine.gone = True
            engine.gone_at = time.perf_counter()
            self._on_gone(engine)
            if self.closing or engine is not self.engine or self.info is None:
                # Closing, an engine already replaced, or the first start (start() reports it).
                self.cond.notify_all()
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
                log_event(
                    "engine_died", logging.ERROR, pid=engine.process.pid, how=how, deaths_in_window=len(self._deaths)
                )
                if len(self._deaths) >= MAX_DEATHS:
                    give_up = True
                    self.reason = (
                        f"the engine process died {len(self._deaths)} times within {DEATH_WINDOW_SEC:g} s "
                        f"(last: {how}); restart the worker once the cause is fixed"
                    )
            if give_up:
                self.state = EngineState.FAILED
                log_event("engine_given_up", logging.CRITICAL, reason=self.reason)
            else:
                self.state = EngineState.RESTARTING
                self.reason = f"the engine process {how}; a new one is starting"
                self._restart_at = time.monotonic() + self._pause(engine)
            self.cond.notify_all()
        if give_up:
            self._on_given_up()

    def _pause(self, engine: Engine) -> float:
        """Before the next start: none after an engine the front chose to end, else growing."""
        if engine.process.killed and engine.ready is not None:
            return 0.0
        failures = max(len(self._deaths), self._failed_starts)
        return RESTART_PAUSES_SEC[min(max(failures, 1), len(RESTART_PAUSES_SEC)) - 1]
