"""Metrics counters move once per job (WO-OBS-1), whoever reports the change."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job, JobState, Outcome, Phase, Sampling
from worker_orcd.metrics import WorkerMetrics


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def finished_job(job_id: str, metrics: WorkerMetrics, tokens_out: int) -> Job:
    job = Job(
        job_id=job_id,
        prompt_tokens=[1, 2],
        sampling=Sampling(max_tokens=8, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=1),
        model="test-model",
        on_finish=metrics.job_finished,
    )
    job.start()
    job.tokens_out = tokens_out
    job.finish(Outcome(JobState.COMPLETED, events.end(tokens_out, 1.0, "max_tokens"), stop_reason="max_tokens"))
    return job


def new_metrics() -> WorkerMetrics:
    return WorkerMetrics(
        lambda: {"uptime": 1.0, "queue_depth": 0, "vram_bytes": None, "slots": 1, "slots_busy": 0, "kv_cells": None}
    )


def test_a_job_is_counted_once():
    metrics = new_metrics()
    job = finished_job("counted-once", metrics, tokens_out=4)
    # A cancel racing the end may try to finish the job again: it loses, and is not counted.
    late = Outcome(JobState.CANCELLED, events.error(ErrorCode.CANCELLED, "late", False))
    assert not job.finish(late)
    assert job.request_cancel(CancelReason.CLIENT) is Phase.FINISHED
    s = samples(metrics)
    assert s[("worker_requests_total", (("outcome", "completed"),))] == 1
    assert s[("worker_tokens_generated_total", ())] == 4
    assert s[("worker_inference_duration_ms_count", ())] == 1


def test_cancel_phases_and_rejections():
    metrics = new_metrics()
    for phase in (Phase.QUEUED, Phase.DECODE, Phase.DECODE, Phase.FINISHED, None):
        metrics.cancel_requested(phase)
    metrics.rejected()
    s = samples(metrics)
    phases = {dict(k[1])["phase"]: v for k, v in s.items() if k[0] == "worker_cancellations_total"}
    assert phases == {"queued": 1, "prompt": 0, "decode": 2, "finished": 1, "unknown": 1}
    assert s[("worker_requests_total", (("outcome", "rejected"),))] == 1
    assert ("worker_vram_bytes", ()) not in s  # no GPU reading, no series
    assert s[("worker_uptime_seconds", ())] == 1.0 and s[("worker_queue_depth", ())] == 0
