"""The worker on an NVIDIA GPU (CUDA build): what /health says, VRAM freed before CANCELLED,
the forced cancel, and `--gpu-device none`.

VRAM is read through NVML for the engine process (the figure NVML lists for its pid;
where a PID namespace hides it, the whole device's). The reading "at CANCELLED" is
taken on the stream's reader thread the moment the event is parsed: the worker frees
a job's context before it sends the event, so that reading is back at idle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.prompts import LONG_ANSWER_PROMPT
from testkit.streams import StreamThread, cancel, terminal, uid
from testkit.waiting import wait_until
from testkit.worker import WorkerProcess
from worker_orcd.gpu.nvml import NvmlProbe, VramSample

pytestmark = pytest.mark.gpu

MIB = 1 << 20
# NVML counts in the driver's allocation granules: a freed context is within a few of them.
TOLERANCE = 8 * MIB
HANG_PREFIX = "hang-"
PCI_BUS_ID = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# Long enough that the prompt is evaluated in several chunks, short enough for any n_ctx here.
PROMPT = "Hello there, " * 300 + "tell me a story."
STARTUP_S = 180.0  # loading a model into VRAM, CUDA's start included


def health(worker: WorkerProcess) -> dict[str, Any]:
    return httpx.get(worker.url + "/health", timeout=10).json()


def probe_of(h: dict[str, Any]) -> NvmlProbe:
    """NVML's view of the GPU the worker runs on, found by its PCI bus id."""
    probe = NvmlProbe(pci_bus_id=h["gpu"]["pci_bus_id"])
    assert probe.available, probe.reason
    return probe


@dataclass
class Vram:
    """Readings of one engine process: its own bytes where NVML lists it, else the device's,
    decided by the first reading so that every later one is read the same way."""

    probe: NvmlProbe
    pid: int
    per_process: bool | None = None

    def sample(self) -> VramSample:
        s = self.probe.sample(self.pid)
        assert s is not None, "NVML gave no reading"
        if self.per_process is None:
            self.per_process = s.process_bytes is not None
        return s

    def figure(self, s: VramSample | None = None) -> int:
        s = s or self.sample()
        if self.per_process:
            assert s.process_bytes is not None, f"NVML no longer lists the engine: {s}"
            return s.process_bytes
        return s.device_used_bytes

    def settled(self) -> int:
        """Once five readings in a row agree (a spare context may still be being made)."""
        recent: list[int] = []

        def steady() -> int | None:
            recent.append(self.figure())
            last = recent[-5:]
            return last[-1] if len(last) == 5 and max(last) - min(last) <= MIB else None

        return wait_until(steady, timeout=30, interval=0.02)


def engine_vram(worker: WorkerProcess) -> Vram:
    h = health(worker)
    return Vram(probe_of(h), h["engine"]["pid"])


def read_at_terminal(vram: Vram, into: list[VramSample]):
    """An on_event callback: reads VRAM as the terminal event is parsed, on the reader thread."""

    def on_event(_stream: StreamThread, event) -> None:
        if event.name in ("end", "error"):
            into.append(vram.sample())

    return on_event


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def model(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"{request.param}_model")


@pytest.fixture(scope="module")
def gpu_worker(model: Path, gpu_device: int):
    w = WorkerProcess(args=["--model", str(model), "--gpu-device", str(gpu_device)]).start(timeout=STARTUP_S)
    yield w
    w.stop()


def test_health_names_the_cuda_device(gpu_worker):
    h = wait_until(lambda: (r := health(gpu_worker))["vram_bytes_used"] and r, timeout=10)
    assert h["backend"] == "cuda"
    gpu = h["gpu"]
    assert gpu["backend"] == "cuda"
    assert gpu["description"], gpu  # the device's name, e.g. "NVIDIA H200"
    assert PCI_BUS_ID.match(gpu["pci_bus_id"]), gpu
    assert gpu["nvml"]["available"], gpu["nvml"]
    assert h["vram_scope"] in ("process", "device")
    assert h["vram_bytes_used"] > 0


def test_vram_is_back_at_idle_when_a_decode_cancel_arrives(gpu_worker):
    vram = engine_vram(gpu_worker)
    idle = vram.settled()
    at_event: list[VramSample] = []
    body = {"job_id": uid("vram-decode"), "prompt": LONG_ANSWER_PROMPT, "max_tokens": 2000, "temperature": 0}
    stream = StreamThread(gpu_worker, body, on_event=read_at_terminal(vram, at_event)).start()
    stream.wait_tokens(20)
    during = vram.figure()
    with gpu_worker.client() as c:
        cancel(c, body["job_id"])
    end = terminal(stream.join())
    assert end.name == "error" and end.data["code"] == "CANCELLED", end.data
    assert during > idle, "a running job's context is not in VRAM"
    assert vram.figure(at_event[0]) <= idle + TOLERANCE, (idle, during, at_event[0])


def test_vram_is_back_at_idle_when_a_cancel_right_after_start_arrives(gpu_worker):
    """Cancelled as soon as the job starts: during its prompt, or its first tokens on a
    small model, whose prompt takes milliseconds on a GPU. Either way the context is freed first."""
    vram = engine_vram(gpu_worker)
    idle = vram.settled()
    at_event: list[VramSample] = []
    body = {"job_id": uid("vram-prompt"), "prompt": PROMPT, "max_tokens": 2000, "temperature": 0}
    stream = StreamThread(gpu_worker, body, on_event=read_at_terminal(vram, at_event)).start()
    stream.wait_for(lambda evs: any(e.name == "started" for e in evs))
    with gpu_worker.client() as c:
        cancel(c, body["job_id"])
    end = terminal(stream.join())
    assert end.name == "error" and end.data["code"] == "CANCELLED", end.data
    assert vram.figure(at_event[0]) <= idle + TOLERANCE, (idle, at_event[0])


def test_forced_cancel_frees_the_hung_engines_vram(tiny_model, gpu_device):
    """The engine hangs in C after 3 tokens (test-only fault), deaf to its flag: the front
    kills it at the deadline, and by CANCELLED (forced) its VRAM is gone from the device."""
    w = WorkerProcess(
        args=["--model", str(tiny_model), "--gpu-device", str(gpu_device), "--cancel-deadline-ms", "1000"],
        env={"WORKER_ORCD_FAULTS": f"hang={HANG_PREFIX}"},
    ).start(timeout=STARTUP_S)
    try:
        vram = engine_vram(w)
        vram.settled()
        idle = vram.sample()
        at_event: list[VramSample] = []
        body = {"job_id": uid(HANG_PREFIX + "job"), "prompt": LONG_ANSWER_PROMPT, "max_tokens": 500,
                "temperature": 0}
        stream = StreamThread(w, body, on_event=read_at_terminal(vram, at_event)).start()
        stream.wait_tokens(3)
        with w.client() as c:
            cancel(c, body["job_id"])
        end = terminal(stream.join(timeout=60))
        assert end.name == "error" and end.data["code"] == "CANCELLED", end.data
        assert end.data.get("forced") is True, end.data
        after = at_event[0]
        assert after.device_used_bytes <= idle.device_used_bytes + TOLERANCE, (idle, after)
        if idle.process_bytes is not None:  # NVML lists pids here: the killed engine is gone from it
            assert after.process_bytes is None, after
            assert after.device_used_bytes <= idle.device_used_bytes - idle.process_bytes + TOLERANCE, (idle, after)
        # A new engine takes over, on the GPU again.
        wait_until(lambda: (e := health(w)["engine"])["state"] == "ready" and e["pid"] != vram.pid, timeout=STARTUP_S)
        assert health(w)["backend"] == "cuda"
    finally:
        w.stop()


def test_gpu_device_none_runs_on_the_cpu_without_vram(tiny_model, gpu_nvml):
    """A GPU build told `--gpu-device none` runs on the CPU and holds nothing on the GPU,
    not even for large batches (which llama.cpp would otherwise offload)."""
    device = gpu_nvml
    before = device.sample()
    w = WorkerProcess(args=["--model", str(tiny_model), "--gpu-device", "none"]).start(timeout=STARTUP_S)
    try:
        h = health(w)
        assert h["backend"] == "cpu"
        assert h["gpu"] is None and h["vram_bytes_used"] is None
        pid = h["engine"]["pid"]
        readings: list[VramSample] = []

        def on_event(_stream: StreamThread, event) -> None:
            if event.name == "token" and not readings:  # the prompt, in batches, has run
                readings.append(device.sample(pid))

        body = {"job_id": uid("cpu"), "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        end = terminal(StreamThread(w, body, on_event=on_event).start().join())
        assert end.name == "end", end.data
        during = readings[0]
        assert not during.process_bytes, during  # the engine is not on the device
        assert during.device_used_bytes <= before.device_used_bytes + TOLERANCE, (before, during)
    finally:
        w.stop()
