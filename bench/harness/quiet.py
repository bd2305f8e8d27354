"""Telling a clean sample from one taken while other processes used the CPU.

On a shared machine a benchmark sample is only as good as the quiet around it:
two engine threads on two cores slow down sharply when anything else wants a
core. The guard measures the CPU time used by every process that is not part
of the benchmark (machine-wide CPU time from /proc/stat minus that of the
benchmark's own processes) while each sample runs. A sample during which
others used more than `limit` of a core is taken again, after waiting for the
machine to be quiet, up to `retries` times; the report says how many samples
were retaken and how many had to be kept anyway. Linux only; elsewhere every
sample is accepted as is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_ticks() -> int | None:
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: everything but idle and iowait
    return v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)


def _process_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Window:
    started: float
    busy: int | None
    own: int


@dataclass
class QuietGuard:
    """Retakes samples that other processes disturbed."""

    own_pids: Callable[[], Iterable[int]]
    limit: float = 0.15  # cores' worth of foreign CPU tolerated during a sample
    retries: int = 3
    wait_s: float = 60.0  # longest wait for a quiet machine before a retake
    taken: int = 0
    retaken: int = 0
    kept_disturbed: int = 0
    foreign: list[float] = field(default_factory=list)  # foreign cores of each kept sample

    @property
    def enabled(self) -> bool:
        return _machine_busy_ticks() is not None

    def _own(self) -> int:
        return sum(_process_ticks(pid) for pid in set(self.own_pids()))

    def open(self) -> Window:
        return Window(time.monotonic(), _machine_busy_ticks(), self._own())

    def close(self, window: Window) -> float | None:
        """Cores' worth of CPU that other processes used during the window."""
        busy = _machine_busy_ticks()
        if busy is None or window.busy is None:
            return None
        elapsed = time.monotonic() - window.started
        if elapsed <= 0:
            return 0.0
        foreign_ticks = max(0, (busy - window.busy) - (self._own() - window.own))
        return foreign_ticks / _TICK / elapsed

    def sample(self, fn: Callable[[], T]) -> T:
        """Run `fn`; run it again while others disturbed it (and retries are left)."""
        attempt = 0
        while True:
            window = self.open()
            result = fn()
            foreign = self.close(window)
            self.taken += 1
            if foreign is None or foreign <= self.limit:
                self.foreign.append(foreign or 0.0)
                return result
            if attempt >= self.retries:
                self.kept_disturbed += 1
                self.foreign.append(foreign)
                return result
            attempt += 1
            self.retaken += 1
            self.wait_for_quiet()

    def wait_for_quiet(self, window_s: float = 1.0) -> bool:
        """Wait until others use less than `limit` for two windows in a row."""
        deadline = time.monotonic() + self.wait_s
        calm = 0
        while time.monotonic() < deadline:
            w = self.open()
            time.sleep(window_s)
            foreign = self.close(w)
            calm = calm + 1 if foreign is not None and foreign <= self.limit else 0
            if calm >= 2:
                return True
        return False

    def report(self) -> dict[str, float | int]:
        kept = self.foreign
        return {
            "samples": len(kept),
            "retaken": self.retaken,
            "kept_disturbed": self.kept_disturbed,
            "foreign_cores_max": round(max(kept), 3) if kept else 0.0,
            "foreign_cores_mean": round(sum(kept) / len(kept), 3) if kept else 0.0,
            "limit_cores": self.limit,
        }


def take(guard: QuietGuard | None, fn: Callable[[], T]) -> T:
    """One sample, guarded when there is a guard."""
    return fn() if guard is None else guard.sample(fn)
