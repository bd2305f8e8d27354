"""VRAM readings through NVML, sampled off the request path.

`/health` must answer from cached state (no NVML or CUDA call per request), so a
background thread samples and readers take the last sample. Without a GPU, or
without the NVML library, every reading is None.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True, slots=True)
class VramSample:
    process_bytes: int | None  # what this process holds on the device
    device_used_bytes: int
    device_total_bytes: int


class NvmlProbe:
    """One GPU through NVML; `available` is False when there is none to ask."""

    def __init__(self, gpu_device: int | None) -> None:
        self.available = False
        self.name: str | None = None
        self._nvml: Any = None
        self._handle: Any = None
        if gpu_device is None:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_device)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self._nvml = pynvml
            self.available = True
        except Exception:  # no library, no driver, no such device: all mean "no GPU"
            self.available = False

    def sample(self, pid: int | None = None) -> VramSample | None:
        """The device's memory, and what process `pid` (default: this one) holds on it."""
        if not self.available:
            return None
        nvml = self._nvml
        pid = os.getpid() if pid is None else pid
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(self._handle)
            mine = None
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    mine = int(proc.usedGpuMemory)
            return VramSample(mine, int(mem.used), int(mem.total))
        except Exception:
            return None


class VramMonitor:
    def __init__(
        self, probe: NvmlProbe, interval_sec: float = 1.0, *, pid: Callable[[], int | None] = lambda: None
    ) -> None:
        """`pid`: whose VRAM to read (the engine process, which holds the model); None: this one."""
        self.probe = probe
        self.interval_sec = interval_sec
        self._pid = pid
        self.latest: VramSample | None = probe.sample(pid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vram-monitor", daemon=True)

    def start(self) -> None:
        if self.probe.available:
            self._thread.start()

    def refresh(self) -> VramSample | None:
        self.latest = self.probe.sample(self._pid())
        return self.latest

    def used_bytes(self) -> int | None:
        s = self.latest
        if s is None:
            return None
        return s.process_bytes if s.process_bytes is not None else s.device_used_bytes

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_sec):
            self.refresh()
