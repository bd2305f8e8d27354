"""The goals the worker is held to, checked against a report.

They were set for 2 CPU cores and SmolLM2-135M Q4_1; on other hardware and
models the report still shows them, as reference points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.harness.report import lookup


@dataclass(frozen=True)
class Target:
    key: str
    description: str
    limit: float
    at_most: bool  # True: the value must be ≤ limit; False: ≥ limit
    unit: str
    path: str  # where the value stands in the report: its keys, joined by dots
    magnitude: bool = False  # a growth either way counts: its absolute value is held to the limit

    def value(self, report: dict[str, Any]) -> float | None:
        value = lookup(report, *self.path.split("."))
        return abs(value) if self.magnitude and value is not None else value

    def check(self, report: dict[str, Any]) -> dict[str, Any]:
        try:
            value = self.value(report)
        except TypeError:
            value = None
        met = None if value is None else (value <= self.limit if self.at_most else value >= self.limit)
        return {
            "key": self.key,
            "description": self.description,
            "value": value,
            "limit": self.limit,
            "op": "<=" if self.at_most else ">=",
            "unit": self.unit,
            "met": met,
        }


TARGETS = (
    Target("stream_vs_bare", "streaming tokens/s ÷ best bare loop (paired)", 0.95, False, "×", "comparisons.stream.worker_over_best_bare_paired"),
    Target("stream_vs_peer", "streaming tokens/s ÷ llama-cpp-python server (paired)", 1.1, False, "×", "comparisons.stream.worker_over_peer_paired"),
    Target("front_cpu_vs_peer", "front CPU per token (all threads) ÷ peer's main-thread CPU per token", 0.5, True, "×", "comparisons.stream.worker_process_cpu_over_peer_loop_cpu"),
    Target("ttft_vs_bare", "idle time to first token − best bare loop (paired p50)", 3.0, True, "ms", "comparisons.ttft.worker_minus_best_bare_ms_paired"),
    Target("cancel_decode_client_p99", "cancel during decode, client-observed p99", 10.0, True, "ms", "scenarios.cancel_decode.worker.client_ms.p99"),
    Target("cancel_decode_stop_p99", "cancel during decode, stop_ms p99", 3.0, True, "ms", "scenarios.cancel_decode.worker.stop_ms.p99"),
    Target("cancel_prompt_client_p99", "cancel during a long prompt, client-observed p99", 20.0, True, "ms", "scenarios.cancel_prompt.worker.client_ms.p99"),
    Target("free_after_decode_cancel", "next job's extra TTFT after a decode cancel (p50)", 5.0, True, "ms", "comparisons.cancel_decode.worker_free_after_cancel_ms"),
    Target("free_after_prompt_cancel", "next job's extra TTFT after a prompt cancel (p50)", 5.0, True, "ms", "comparisons.cancel_prompt.worker_free_after_cancel_ms"),
    Target("check_overhead", "cancel checks' cost on tokens/s", 1.0, True, "%", "scenarios.overhead.overhead_pct"),
    Target("memory_cycles", "RSS after all cycles vs after the first ones", 2.0, True, "%", "scenarios.memory.rss_growth_pct", magnitude=True),
    Target("memory_cycles_vram", "VRAM after all cycles vs after the first ones", 2.0, True, "%", "scenarios.memory.vram_growth_pct", magnitude=True),
    Target("neighbour_1_vs_idle", "beside 1 busy process: streaming ÷ the worker's own idle speed", 0.4, False, "×", "scenarios.neighbours.comparisons.1.worker_over_its_idle"),
    Target("neighbour_1_vs_peer", "beside 1 busy process: streaming ÷ llama-cpp-python server", 1.0, False, "×", "scenarios.neighbours.comparisons.1.worker_over_peer"),
    Target("neighbour_1_cancel_p99", "beside 1 busy process: cancel during decode, client p99", 100.0, True, "ms", "scenarios.neighbours.counts.1.cancel_decode.client_ms.p99"),
    Target("neighbour_2_vs_idle", "beside 2 busy processes: streaming ÷ the worker's own idle speed", 0.2, False, "×", "scenarios.neighbours.comparisons.2.worker_over_its_idle"),
)


def check(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [t.check(report) for t in TARGETS]
