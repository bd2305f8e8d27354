"""Scenario 7: the worker's resident memory (and VRAM) before, during and after a job, and over many cycles.

RSS needs the worker's pid (a worker this command started, or `--worker-pid`) and
counts its child processes too; VRAM comes from NVML, for the engine process (a
child of that pid) on the worker's GPU, found by its PCI bus id, when a GPU and
the library are there.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from bench.harness.worker_client import WorkerClient
from testkit.rss import descendants, rss_bytes
from worker_orcd.gpu.nvml import NvmlProbe


def resident_bytes(pid: int | None) -> int | None:
    """The resident memory of `pid` and its descendants; None without a pid or once it is gone."""
    if pid is None:
        return None
    try:
        return rss_bytes(pid)
    except OSError:
        return None


class MemoryProbe:
    def __init__(self, pid: int | None, gpu_device: int | None, *, pci_bus_id: str | None = None) -> None:
        self.pid = pid
        self.nvml = None
        if gpu_device is not None and pid is not None:
            self.nvml = NvmlProbe(pci_bus_id=pci_bus_id) if pci_bus_id else NvmlProbe(gpu_device)

    def sample(self) -> dict[str, int | None]:
        rss = resident_bytes(self.pid)
        vram = None
        if self.nvml is not None and self.nvml.available and self.pid is not None:
            for pid in (self.pid, *descendants(self.pid)):  # the engine holds the model
                s = self.nvml.sample(pid)
                if s is not None and s.scope == "process":
                    vram = s.process_bytes
                    break
        return {"rss_bytes": rss, "vram_bytes": vram}


def run(
    client: WorkerClient,
    probe: MemoryProbe,
    *,
    prompt: Callable[[int], str],
    cycles: int,
    first: int,
    settle_s: float,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    time.sleep(settle_s)
    idle = probe.sample()

    # During: sampled while a job decodes, between reading token 20 and cancelling.
    during: dict[str, int | None] = {}
    run_ = client.cancel_after_tokens(
        prompt(0), after=20, max_tokens=512, before_cancel=lambda: during.update(probe.sample())
    )
    right_after = probe.sample()  # CANCELLED is emitted after the context is freed
    time.sleep(settle_s)
    after = probe.sample()

    marks: dict[str, dict[str, int | None]] = {}
    t0 = time.perf_counter()
    for i in range(1, cycles + 1):
        client.cancel_after_tokens(prompt(i), after=1, max_tokens=64)
        if i == first or i == cycles:
            time.sleep(settle_s)
            marks[str(i)] = probe.sample()
        if i % 50 == 0:
            progress(f"memory: {i}/{cycles} execute/cancel cycles")
    elapsed = time.perf_counter() - t0
    early, late = marks.get(str(first), {}), marks.get(str(cycles), {})
    return {
        "idle_before": idle,
        "during_job": during,
        "right_after_cancelled": right_after,
        "after_settle": after,
        "cancel_of_probed_job": {"stop_ms": run_.stop_ms, "cancel_ms": run_.cancel_ms},
        "cycles": cycles,
        "first_cycles": first,
        "after_first_cycles": early,
        "after_all_cycles": late,
        "cycles_seconds": round(elapsed, 1),
        "rss_growth_pct": _growth(early.get("rss_bytes"), late.get("rss_bytes")),
        "vram_growth_pct": _growth(early.get("vram_bytes"), late.get("vram_bytes")),
        "rss_after_vs_idle_pct": _growth(idle.get("rss_bytes"), right_after.get("rss_bytes")),
    }


def _growth(before: int | None, after: int | None) -> float | None:
    if not before or after is None:
        return None
    return round((after - before) * 100.0 / before, 3)
