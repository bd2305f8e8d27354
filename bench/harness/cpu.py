"""CPU time per token: where the streaming layer's cost shows up, whatever the machine's load.

Wall-clock figures on a shared 2-core machine move with other people's work; CPU
time spent per token by the worker's event-loop thread (the HTTP/SSE side) and by
this client does not move much, and on a machine whose cores the engine keeps
busy it is exactly what the engine loses. Linux only (/proc); None elsewhere.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


def _ns(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])  # schedstat: time on CPU, ns
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class CpuSample:
    event_loop_ns: int | None  # the worker's main thread: asyncio, HTTP, SSE
    process_ns: int | None  # the whole worker process
    client_ns: int  # this thread: reading the stream


class CpuProbe:
    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def sample(self) -> CpuSample:
        loop = proc = None
        if self.pid is not None:
            loop = _ns(f"/proc/{self.pid}/task/{self.pid}/schedstat")
            proc = _process_ns(self.pid)
        return CpuSample(loop, proc, time.thread_time_ns())


def _process_ns(pid: int) -> int | None:
    """Every thread's time on CPU (schedstat, ns: finer than utime's clock ticks)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    times = [_ns(f"/proc/{pid}/task/{task}/schedstat") for task in tasks]
    known = [t for t in times if t is not None]
    return sum(known) if known else None


def per_token_us(before: CpuSample, after: CpuSample, tokens: int) -> dict[str, float | None]:
    def d(a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None or tokens <= 0 else round((b - a) / tokens / 1000.0, 1)

    return {
        "event_loop_us": d(before.event_loop_ns, after.event_loop_ns),
        "worker_process_us": d(before.process_ns, after.process_ns),
        "client_us": d(before.client_ns, after.client_ns),
    }
