"""The supervisor against scripted engines on the real wire (tests/unit/fake_engine.py).

What the real engine makes hard to time: an engine that dies between taking a run
and starting it, a confirmation that waits unread in the socket at the deadline, a
close while an engine is being made, a frame the front cannot read.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from testkit.jobs import make_job
from tests.unit.fake_engine import FakeEngine, FakeEngines, complete
from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.messages import RunRequest
from worker_orcd.config import WorkerConfig, default_model_path
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job, JobState
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.supervisor import engine_process, lifecycle, supervisor
from worker_orcd.supervisor.engine_process import EngineProcess
from worker_orcd.supervisor.supervisor import EngineSupervisor

DEADLINE_MS = 300


def wait_until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {predicate}"
        time.sleep(0.002)
    return value


@pytest.fixture
def start_supervisor():
    started: list[EngineSupervisor] = []

    def start(engines: FakeEngines, queue: JobQueue | None = None, **config: object) -> EngineSupervisor:
        settings = {"cancel_deadline_ms": DEADLINE_MS, "engine_start_timeout_sec": 5.0, **config}
        config_ = WorkerConfig(model_path=Path("/fake.gguf"), **settings)
        sup = EngineSupervisor(config_, JobQueue(4) if queue is None else queue, spawn=engines)
        sup.start()
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.queue.close()
        sup.close()


def submit(sup: EngineSupervisor, job_id: str) -> tuple[Job, list]:
    job, sink = make_job(job_id, on_change=sup.notify)
    sup.queue.put(job)
    return job, sink


def ended(job: Job, timeout: float = 10.0) -> Job:
    assert job.wait(timeout), f"{job.job_id} did not end"
    return job


def code_of(job: Job) -> str | None:
    return job.outcome.error_code.value if job.outcome and job.outcome.error_code else None


def dies_on_run(engine: FakeEngine, message: RunRequest) -> None:
    engine.proc.end(-9)  # took the run off the wire, never said `started`


def test_a_job_the_dead_engine_never_took_runs_on_the_next_engine(start_supervisor):
    engines = FakeEngines(dies_on_run, complete)
    sup = start_supervisor(engines)
    job, sink = submit(sup, "never-taken")
    assert ended(job).state is JobState.COMPLETED, job.outcome
    assert len(sink.terminal()) == 1 and [e.name for e in sink.events][0] == "started"
    assert len(engines.engines) == 2 and engines.engines[1].runs[0].job_id == "never-taken"


def stops_then_dies(engine: FakeEngine, message: RunRequest) -> None:
    engine.started(message)
    engine.token(message, 1)
    wait_until(lambda: engine.word_raised(message))
    engine.stopped(message)
    engine.proc.end(-11)  # a crash while freeing the context


def dies_once_raised(engine: FakeEngine, message: RunRequest) -> None:
    engine.started(message)
    engine.token(message, 1)
    wait_until(lambda: engine.word_raised(message))
    engine.proc.end(-9)  # gone before it said anything more


@pytest.mark.parametrize("script", [stops_then_dies, dies_once_raised])
@pytest.mark.parametrize(
    ("reason", "code", "state"),
    [
        (CancelReason.CLIENT, "CANCELLED", JobState.CANCELLED),
        (CancelReason.TIMEOUT, "INFERENCE_TIMEOUT", JobState.FAILED),
        (CancelReason.SHUTDOWN, "WORKER_SHUTDOWN", JobState.FAILED),
    ],
)
def test_a_cancel_then_the_engines_death_ends_as_the_raiser_decided(start_supervisor, script, reason, code, state):
    engines = FakeEngines(script)
    sup = start_supervisor(engines)
    job, sink = submit(sup, "raised-then-dead")
    wait_until(lambda: job.tokens_out == 1)
    job.request_cancel(reason)
    assert ended(job).state is state and code_of(job) == code
    [terminal] = sink.terminal()
    assert terminal.data["stop_ms"] <= terminal.data["cancel_ms"] and "forced" not in terminal.data
    wait_until(lambda: sup.state == "ready" and len(engines.engines) == 2)  # the next engine serves
    after, _ = submit(sup, "after")
    assert ended(after).state is JobState.COMPLETED


def test_a_death_without_a_cancel_is_engine_failed(start_supervisor):
    def dies_mid_run(engine: FakeEngine, message: RunRequest) -> None:
        engine.started(message)
        engine.token(message, 1)
        engine.proc.end(-9)

    sup = start_supervisor(FakeEngines(dies_mid_run))
    job, _ = submit(sup, "dies")
    assert ended(job).state is JobState.FAILED and code_of(job) == "ENGINE_FAILED"


def test_a_done_waiting_unread_at_the_deadline_is_a_confirmation(start_supervisor):
    """The reader is held up (here: by the sink it hands a token to, as a busy GIL would)
    while the engine's `stopped` and `done` wait in the socket past the deadline."""
    release = threading.Event()
    held = threading.Event()

    def confirms_behind_a_token(engine: FakeEngine, message: RunRequest) -> None:
        engine.started(message)
        wait_until(lambda: engine.word_raised(message))
        engine.token(message, 1, "held")  # the reader stops at this one
        engine.stopped(message)
        engine.done(message, stopped_at=time.perf_counter(), tokens_out=1)

    sup = start_supervisor(FakeEngines(confirms_behind_a_token))
    job, sink = make_job("unread", on_change=sup.notify)
    inner = job.sink

    def slow_sink(event):
        if event.name == "token":
            held.set()
            release.wait(10)
        inner(event)

    job.sink = slow_sink
    sup.queue.put(job)
    wait_until(lambda: job.state is JobState.RUNNING and sink.events)
    job.request_cancel(CancelReason.CLIENT)
    assert held.wait(5)
    wait_until(lambda: sup.lifecycle.engine.unread())  # `done` has come, not yet read through
    # Past the hard deadline, then the reader gets going again.
    wait_until(lambda: time.perf_counter() > job.cancel_flag.raised_at + DEADLINE_MS / 1000 + 0.1)
    release.set()
    assert ended(job).state is JobState.CANCELLED
    assert not job.outcome.forced and sup.restarts == 0


def test_close_while_an_engine_is_being_made_ends_that_engine(start_supervisor):
    engines = FakeEngines()
    sup = start_supervisor(engines)
    engines.hold.clear()
    engines.engines[0].proc.end(-9)  # a death: the keeper makes the next one
    assert engines.holding.wait(5)
    closer = threading.Thread(target=sup.close)
    closer.start()
    wait_until(lambda: sup.lifecycle.closing)
    engines.hold.set()
    closer.join(10)
    assert not closer.is_alive()
    second = engines.wait_for(2)
    assert second.proc.ended, "the engine made during close() was left running"


def test_every_restart_is_made_by_one_thread_that_outlives_it(start_supervisor):
    """An engine's parent-death signal fires when the thread that spawned it ends."""
    engines = FakeEngines()
    sup = start_supervisor(engines)
    for n in (1, 2):
        engines.engines[-1].proc.end(-9)
        engine = engines.wait_for(n + 1)
        wait_until(lambda: sup.state == "ready" and sup.lifecycle.engine.ready is not None)
    spawners = {e.spawned_by for e in engines.engines[1:]}
    assert len(spawners) == 1
    [keeper] = spawners
    # The restarted engine is ready and serving: its spawner is still there.
    assert keeper.is_alive() and keeper is not threading.current_thread()
    job, _ = submit(sup, "on-restarted")
    assert ended(job).state is JobState.COMPLETED and engine.runs


def test_a_restart_that_never_gets_ready_is_given_up_and_waiting_jobs_end(start_supervisor):
    engines = FakeEngines(ready=lambda i: i == 0)  # every restart hangs before `ready`
    sup = start_supervisor(engines, engine_start_timeout_sec=0.2)
    engines.engines[0].proc.end(-9)
    wait_until(lambda: sup.state == "restarting")
    health = sup.health()
    assert "a new one is starting" in health["reason"]
    job, sink = submit(sup, "waits")
    assert ended(job).state is JobState.FAILED and code_of(job) == "ENGINE_UNAVAILABLE"
    assert sup.state == "failed" and "3 times in a row" in sup.reason and "not ready within 0.2 s" in sup.reason
    assert len(engines.engines) == 1 + lifecycle.MAX_FAILED_STARTS
    assert all(e.proc.ended for e in engines.engines)  # each one killed at its deadline
    [terminal] = sink.terminal()
    assert terminal.data["code"] == "ENGINE_UNAVAILABLE"


def test_a_first_start_past_its_deadline_fails_the_start():
    engines = FakeEngines(ready=lambda i: False)
    config = WorkerConfig(model_path=Path("/fake.gguf"), engine_start_timeout_sec=0.2)
    sup = EngineSupervisor(config, JobQueue(1), spawn=engines)
    with pytest.raises(supervisor.EngineStartFailed, match=r"was not ready within 0\.2 s"):
        sup.start()
    assert engines.engines[0].proc.ended


def test_a_frame_the_front_cannot_read_is_the_engines_death(start_supervisor):
    def garbles(engine: FakeEngine, message: RunRequest) -> None:
        engine.started(message)
        engine.token(message, 1)
        engine.channel.send_frame(b"M\x00 not a message")
        wait_until(lambda: engine.proc.ended)  # the front kills it

    engines = FakeEngines(garbles)
    sup = start_supervisor(engines)
    job, _ = submit(sup, "garbled")
    assert ended(job, 5).state is JobState.FAILED and code_of(job) == "ENGINE_FAILED"
    assert engines.engines[0].proc.signals  # killed by the front, its memory back
    wait_until(lambda: sup.state == "ready" and len(engines.engines) == 2)
    after, _ = submit(sup, "after")
    assert ended(after).state is JobState.COMPLETED


class SlowTake(JobQueue):
    """Holds a job the dispatcher took: out of the queue, not yet its active job."""

    def __init__(self) -> None:
        super().__init__(4)
        self.taken, self.go = threading.Event(), threading.Event()

    def take(self):
        job = super().take()
        if job is not None:
            self.taken.set()
            self.go.wait(10)
        return job


def test_stop_jobs_cancels_a_job_taken_from_the_queue_before_it_closed(start_supervisor):
    engines = FakeEngines()
    queue = SlowTake()
    sup = start_supervisor(engines, queue)
    job, sink = submit(sup, "in-between")
    assert queue.taken.wait(5)
    assert queue.close() == []  # the queue no longer has it
    sup.stop_jobs(CancelReason.SHUTDOWN)
    queue.go.set()
    assert ended(job).state is JobState.FAILED and code_of(job) == "WORKER_SHUTDOWN"
    assert not any(e.runs for e in engines.engines)  # it never ran
    assert sup.join(5)


TEXTS = [("Once upon a time", True), ("stop", False)]
TOKENS = [[1, 1, 1, 1], [1]]  # what the fake engine answers for TEXTS


def tokenize_on_loop(sup: EngineSupervisor) -> tuple[list[list[int]], list]:
    """`tokenize_on_loop` called on the loop that reads the channels (the supervisor's own
    here; the HTTP server's in the worker), with an `on_thread` that records its calls."""
    asked: list = []

    async def on_thread(fn, *args):
        asked.append(fn)
        return await asyncio.to_thread(fn, *args)

    future = asyncio.run_coroutine_threadsafe(sup.tokenize_on_loop(TEXTS, on_thread), sup._loop)
    return future.result(10), asked


def test_tokenizing_on_the_loop_takes_no_thread_while_the_engine_is_ready(start_supervisor):
    sup = start_supervisor(FakeEngines())
    tokens, asked = tokenize_on_loop(sup)
    assert tokens == TOKENS and asked == []
    assert sup.client.pending == 0  # nothing left behind


def test_tokenizing_on_the_loop_asks_the_next_engine_when_this_one_dies(start_supervisor):
    engines = FakeEngines(dies_on_tokenize=lambda i: i == 0)
    sup = start_supervisor(engines)
    tokens, asked = tokenize_on_loop(sup)
    assert tokens == TOKENS
    assert asked == [sup.tokenize]  # the wait for the successor is a thread's
    assert len(engines.engines) == 2 and sup.client.pending == 0


def test_engine_process_start_closes_its_socket_when_popen_fails(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(engine_process.subprocess, "Popen", refuse)
    config = WorkerConfig(model_path=default_model_path() or Path("/fake.gguf"), state_dir=tmp_path)
    board = CancelBoard(1)
    before = set(os.listdir("/proc/self/fd"))
    kept = []  # the failures, tracebacks and all, as a log or a retry loop may keep them
    for _ in range(5):
        with pytest.raises(OSError) as failure:
            EngineProcess.start(config, board)
        kept.append(failure)
    assert set(os.listdir("/proc/self/fd")) <= before


def test_the_fake_is_a_process_as_the_supervisor_sees_it():
    """The harness itself: a killed fake ends as a SIGKILLed process does."""
    engines = FakeEngines()
    process = engines(WorkerConfig(model_path=Path("/fake.gguf")), CancelBoard(1))
    process.kill()
    assert process.how_it_ended() == "killed by SIGKILL"
    with pytest.raises(subprocess.TimeoutExpired):
        FakeEngines()(WorkerConfig(model_path=Path("/fake.gguf")), CancelBoard(1)).proc.wait(0.01)
