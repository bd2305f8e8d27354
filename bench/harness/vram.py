"""VRAM around each cancel, read when its CANCELLED event is taken off the stream; and the forced cancel.

The memory scenario samples once, after a stream has been read to its end.
Here every cancel gets its own readings: idle (once the readings stop moving),
during the job (just before the cancel), and at the terminal event, read the
moment the event is taken off the stream. The worker frees a job's context
before it sends CANCELLED, so the last reading must be back at idle, within a
tolerance for the driver's allocation granularity.

The forced cancel needs a worker started with the test-only fault
`WORKER_ORCD_FAULTS=hang=<prefix>`: a job whose id has the prefix makes its
engine hang in C after 3 tokens, deaf to its flag, and only the front's
deadline (kill, reap, CANCELLED with forced: true) ends it. The killed engine's
VRAM must be gone at the event; the new engine starts loading afterwards.

Without NVML (no GPU) the VRAM readings are None and the resident memory of
the worker's processes is still recorded, so the same code runs on the CPU.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from bench.harness.memory import resident_bytes
from bench.harness.stats import summary
from bench.harness.worker_client import TERMINAL, OpenJob, WorkerClient
from worker_orcd.gpu.nvml import NvmlProbe

MIB = 1 << 20
# NVML counts in the driver's allocation granules; a freed context shows within one or two.
DEFAULT_TOLERANCE_BYTES = 8 * MIB
HANG_PREFIX = "gpucheck-hang-"  # the fault prefix; the harness's own job ids never start with it
Progress = Callable[[str], None]


class HangClient(WorkerClient):
    """A client whose job ids carry the hang fault's prefix."""

    def new_job_id(self) -> str:
        return HANG_PREFIX + super().new_job_id()


@dataclass(frozen=True)
class Reading:
    process_bytes: int | None  # what the engine process holds on the device
    device_used_bytes: int | None  # the whole device: the only figure where per-process accounting is off
    rss_bytes: int | None  # the worker's processes, children included


class VramReader:
    """NVML readings of one device for a given pid, and the worker tree's resident memory."""

    def __init__(self, gpu_device: int | None, worker_pid: int | None, *, pci_bus_id: str | None = None) -> None:
        """`pci_bus_id`: the device as the worker's /health names it (NVML's index may
        differ from CUDA's); else NVML's index `gpu_device`. None and None: no VRAM readings."""
        if pci_bus_id is not None:
            probe = NvmlProbe(pci_bus_id=pci_bus_id)
        else:
            probe = NvmlProbe(gpu_device) if gpu_device is not None else None
        self.nvml = probe if probe is not None and probe.available else None
        self.worker_pid = worker_pid

    def read(self, engine_pid: int | None) -> Reading:
        process = device = None
        if self.nvml is not None:
            s = self.nvml.sample(engine_pid)
            if s is not None:
                process, device = s.process_bytes, s.device_used_bytes
        return Reading(process, device, resident_bytes(self.worker_pid))

    def steady(
        self, engine_pid: int | None, *, timeout_s: float = 3.0, interval_s: float = 0.02
    ) -> tuple[Reading, bool]:
        """A reading once five in a row agree within a MiB (a spare context may still be
        being made after the last job); the last one, and False, if they never do."""
        deadline = time.monotonic() + timeout_s
        recent: list[Reading] = []
        while True:
            recent = (recent + [self.read(engine_pid)])[-5:]
            figures = [f for f in map(_figure, recent) if f is not None]
            if len(recent) == 5 and (
                not figures or (len(figures) == 5 and max(figures) - min(figures) <= MIB)
            ):
                return recent[-1], True
            if time.monotonic() > deadline:
                return recent[-1], False
            time.sleep(interval_s)


def _figure(r: Reading) -> int | None:
    """The engine's own VRAM where NVML gives it per process, else the device's."""
    return r.process_bytes if r.process_bytes is not None else r.device_used_bytes


def scope(r: Reading) -> str | None:
    if r.process_bytes is not None:
        return "process"
    return "device" if r.device_used_bytes is not None else None


def engine_pid(client: WorkerClient, *, not_pid: int | None = None, timeout_s: float = 120.0) -> int:
    """The pid of a ready engine (not `not_pid`: after a kill, wait for the new one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        engine = client.health().get("engine") or {}
        pid = engine.get("pid")
        if engine.get("state") == "ready" and pid and pid != not_pid:
            return pid
        if time.monotonic() > deadline:
            raise RuntimeError(f"the engine did not become ready: {engine}")
        time.sleep(0.02)


def _up_to_cancel(
    client: WorkerClient, reader: VramReader, prompt: str, max_tokens: int, reach: Callable[[OpenJob], None]
) -> tuple[int, Reading, bool, OpenJob, Reading]:
    """One round up to its cancel: the engine's pid, its steady idle reading, the job opened and
    taken by `reach` to where the cancel lands, and the reading there. A failure closes the job."""
    pid = engine_pid(client)
    idle, steady = reader.steady(pid)
    job = client.open_job(prompt, max_tokens)
    try:
        reach(job)
        during = reader.read(pid)
    except BaseException:
        job.close()
        raise
    return pid, idle, steady, job, during


def _cancel_and_read(client: WorkerClient, job: OpenJob, reader: VramReader, pid: int | None) -> dict[str, Any]:
    """POST /cancel, read to the terminal event, and read VRAM as soon as it is taken."""
    at_event: Reading | None = None
    terminal = None
    tokens = job.seen
    try:
        t_sent = time.perf_counter()
        client.http.post("/cancel", json={"job_id": job.job_id}).raise_for_status()
        for event in job.events:
            if event.name in TERMINAL:
                at_event = reader.read(pid)
                read_at = time.perf_counter()
                terminal = event
                break
            if event.name == "token":
                tokens += 1
    finally:
        job.close()
    if terminal is None or at_event is None:
        raise RuntimeError("stream ended without a terminal event")
    data = terminal.data
    return {
        "code": data.get("code", terminal.name),
        "forced": bool(data.get("forced", False)),
        "tokens_read": tokens,
        "client_ms": round((terminal.at - t_sent) * 1000.0, 3),
        "stop_ms": data.get("stop_ms"),
        "cancel_ms": data.get("cancel_ms"),
        "read_after_event_ms": round((read_at - terminal.at) * 1000.0, 3),
        "at_event": at_event,
    }


def _record(idle: Reading, steady: bool, during: Reading, out: dict[str, Any], tolerance: int) -> dict[str, Any]:
    at_event: Reading = out.pop("at_event")
    # All three in idle's scope: a process figure is never compared with a device one.
    field = "process_bytes" if idle.process_bytes is not None else "device_used_bytes"
    i, d, a = (getattr(r, field) for r in (idle, during, at_event))
    out.update(
        idle=_mib_view(idle),
        idle_steady=steady,
        during=_mib_view(during),
        at_event=_mib_view(at_event),
        scope=scope(idle),
        job_bytes=None if i is None or d is None else d - i,
        left_at_event_bytes=None if i is None or a is None else a - i,
        back_at_idle_before_event=None if i is None or a is None else a <= i + tolerance,
    )
    return out


def _mib_view(r: Reading) -> dict[str, float | None]:
    def mib(v: int | None) -> float | None:
        return None if v is None else round(v / MIB, 1)

    return {
        "engine_mib": mib(r.process_bytes),
        "device_used_mib": mib(r.device_used_bytes),
        "rss_mib": mib(r.rss_bytes),
    }


def cancels(
    client: WorkerClient,
    reader: VramReader,
    *,
    phase: str,
    count: int,
    prompt: Callable[[int], str],
    after_tokens: int = 20,
    delay_s: float = 0.0,
    max_tokens: int = 2000,  # a fast model must still be decoding when the cancel lands
    deadline: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE_BYTES,
    progress: Progress = lambda _: None,
) -> dict[str, Any]:
    """`count` cancels, each with its idle, during and at-event readings. `phase`: "decode"
    (cancel after `after_tokens` tokens) or "prompt" (cancel `delay_s` after sending).
    `deadline` (time.monotonic()): no new cancel starts after it."""

    def reach(job: OpenJob) -> None:
        if phase == "decode":
            client.read_tokens(job, after_tokens)
        else:
            client.wait_until(job, delay_s)

    runs: list[dict[str, Any]] = []
    for i in range(count):
        if deadline is not None and time.monotonic() > deadline:
            break
        pid, idle, steady, job, during = _up_to_cancel(client, reader, prompt(i), max_tokens, reach)
        runs.append(_record(idle, steady, during, _cancel_and_read(client, job, reader, pid), tolerance))
    progress(f"VRAM around cancels during {phase}: {len(runs)}/{count}")
    return _summarise(runs, count, tolerance)


def forced(
    client: HangClient,
    reader: VramReader,
    *,
    rounds: int,
    prompt: Callable[[int], str],
    deadline: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE_BYTES,
    progress: Progress = lambda _: None,
) -> dict[str, Any]:
    """Cancels of jobs whose engine hangs after 3 tokens (the worker must run with the
    fault for HANG_PREFIX). VRAM at the event is the device's: the killed engine's pid
    holds nothing any more, and the new engine is not yet loaded."""
    runs: list[dict[str, Any]] = []
    for i in range(rounds):
        if deadline is not None and time.monotonic() > deadline:
            break
        pid, idle, steady, job, during = _up_to_cancel(
            client, reader, prompt(i), 1500, lambda job: client.read_tokens(job, 3)
        )
        out = _cancel_and_read(client, job, reader, pid)
        at_event: Reading = out["at_event"]
        killed_holds = at_event.process_bytes  # None: the pid is no longer on the device
        # Compare whole-device figures: the killed engine's memory is gone from it.
        out["at_event"] = Reading(None, at_event.device_used_bytes, at_event.rss_bytes)
        rec = _record(
            Reading(None, idle.device_used_bytes, idle.rss_bytes), steady,
            Reading(None, during.device_used_bytes, during.rss_bytes), out, tolerance,
        )
        rec["engine_idle_mib"] = None if idle.process_bytes is None else round(idle.process_bytes / MIB, 1)
        rec["killed_engine_holds_bytes"] = killed_holds
        rec["new_engine_pid"] = engine_pid(client, not_pid=pid)  # ready again before the next round
        runs.append(rec)
    progress(f"forced cancels: {len(runs)}/{rounds}")
    return _summarise(runs, rounds, tolerance)


def _summarise(runs: list[dict[str, Any]], asked: int, tolerance: int) -> dict[str, Any]:
    back = [r["back_at_idle_before_event"] for r in runs]
    judged = [b for b in back if b is not None]
    return {
        "asked": asked,
        "n": len(runs),
        "codes": dict(Counter(r["code"] for r in runs)),
        "forced": sum(r["forced"] for r in runs),
        "client_ms": summary(r["client_ms"] for r in runs),
        "stop_ms": summary(r["stop_ms"] for r in runs if r["stop_ms"] is not None),
        "cancel_ms": summary(r["cancel_ms"] for r in runs if r["cancel_ms"] is not None),
        "scope": next((r["scope"] for r in runs if r["scope"]), None),
        "tolerance_bytes": tolerance,
        "back_at_idle_before_event": (all(judged) if judged else None),
        "back_at_idle_count": sum(judged),
        "runs": runs,
    }
