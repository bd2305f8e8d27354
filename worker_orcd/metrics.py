"""Prometheus metrics: the upstream names plus queue depth and the cancel path's latencies.

Counters move from job changes (a listener on the JobManager) and from the
routes (rejections, cancel requests); gauges are read from cached state when
scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker_orcd.jobs.job import Job, Phase

disable_created_metrics()  # the *_created series say nothing useful here

OUTCOMES = ("completed", "cancelled", "failed", "rejected")
CANCEL_PHASES = ("queued", "prompt", "decode", "finished", "unknown")
LATENCY_BUCKETS_MS = (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 5000)
DURATION_BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)


class _StateGauges(Collector):
    def __init__(self, read: Callable[[], dict[str, float | None]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._read()
        yield GaugeMetricFamily("worker_uptime_seconds", "Seconds since the worker started", state["uptime"])
        yield GaugeMetricFamily("worker_queue_depth", "Jobs waiting to run", state["queue_depth"])
        yield GaugeMetricFamily("worker_slots", "Jobs the engine runs at once (--parallel)", state["slots"])
        yield GaugeMetricFamily("worker_slots_busy", "Slots running a job", state["slots_busy"])
        if state["kv_cells"] is not None:  # only with slots: one job's context is freed whole
            yield GaugeMetricFamily("worker_kv_cells", "KV cache cells in use after the latest job", state["kv_cells"])
        if state["vram_bytes"] is not None:  # only where NVML sees a GPU
            yield GaugeMetricFamily("worker_vram_bytes", "VRAM this worker holds", state["vram_bytes"])


class WorkerMetrics:
    def __init__(self, read_state: Callable[[], dict[str, float | None]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("worker_requests", "Execute requests by outcome", ["outcome"], registry=r)
        self.tokens = Counter("worker_tokens_generated", "Tokens generated", registry=r)
        self.inference_ms = Histogram(
            "worker_inference_duration_ms",
            "Job running time, start to terminal event",
            buckets=DURATION_BUCKETS_MS,
            registry=r,
        )
        self.cancellations = Counter(
            "worker_cancellations", "Cancel requests by the phase they found", ["phase"], registry=r
        )
        self.stop_ms = Histogram(
            "worker_stop_ms", "Cancel accepted to loop stopped", buckets=LATENCY_BUCKETS_MS, registry=r
        )
        self.cancel_ms = Histogram(
            "worker_cancel_ms",
            "Cancel accepted to memory released and terminal event queued",
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        for outcome in OUTCOMES:  # present at zero, so a scrape shows every series
            self.requests.labels(outcome)
        for phase in CANCEL_PHASES:
            self.cancellations.labels(phase)
        r.register(_StateGauges(read_state))

    def job_finished(self, job: Job) -> None:
        """Count a job once; the JobManager calls it once per job, after its end."""
        outcome = job.outcome
        assert outcome is not None
        self.requests.labels(outcome.state.value).inc()
        self.tokens.inc(job.tokens_out)
        duration = job.duration_ms
        if duration is not None:
            self.inference_ms.observe(duration)
        if outcome.stop_ms is not None:
            self.stop_ms.observe(outcome.stop_ms)
        if outcome.cancel_ms is not None:
            self.cancel_ms.observe(outcome.cancel_ms)

    def rejected(self) -> None:
        self.requests.labels("rejected").inc()

    def cancel_requested(self, phase: Phase | None) -> None:
        self.cancellations.labels(phase.value if phase is not None else "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
