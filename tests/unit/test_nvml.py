"""NVML layer (WO-HEALTH-2): which device, whose memory, and what happens when NVML falls short.

A fake `pynvml` stands in for the library: these tests are about matching,
scope and degradation, which a machine without a GPU cannot show otherwise.
"""

from __future__ import annotations

import sys
import time
import types
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from worker_orcd.gpu import nvml
from worker_orcd.gpu.nvml import (
    NVML_VALUE_NOT_AVAILABLE,
    NvmlProbe,
    VramMonitor,
    normalize_pci_bus_id,
    normalize_uuid,
)

GiB = 1 << 30


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"fake NVML error {value}")
        self.value = value


FUNCTION_NOT_FOUND = 13
NO_PERMISSION = 4


@dataclass
class Dev:
    bus_id: str  # as NVML spells it
    uuid: str
    name: str
    used: int = 1 * GiB
    total: int = 80 * GiB
    compute: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, usedGpuMemory)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass
class Handle:
    dev: Dev


class FakeNvml:
    """Builds a module that answers like pynvml for `devices`, in NVML's index order."""

    def __init__(self, devices: list[Dev]) -> None:
        self.devices = devices
        self.calls: Counter[str] = Counter()
        self.raise_on: dict[str, Exception] = {}  # function name -> what it raises
        self.missing: set[str] = set()  # functions the bindings lack

    def module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        m.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
        m.NVML_ERROR_FUNCTION_NOT_FOUND = FUNCTION_NOT_FOUND  # type: ignore[attr-defined]

        def proc_list(kind: str):
            def fn(handle: Handle) -> list[Any]:
                rows = handle.dev.compute if kind == "compute" else handle.dev.graphics
                return [types.SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in rows]

            return fn

        funcs = {
            "nvmlInit": lambda: None,
            "nvmlDeviceGetCount": lambda: len(self.devices),
            "nvmlDeviceGetHandleByIndex": self._by_index,
            "nvmlDeviceGetHandleByPciBusId": self._by_pci,
            "nvmlDeviceGetPciInfo": lambda h: types.SimpleNamespace(busId=h.dev.bus_id.encode()),
            "nvmlDeviceGetUUID": lambda h: h.dev.uuid,
            "nvmlDeviceGetName": lambda h: h.dev.name.encode(),
            "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(
                used=h.dev.used, total=h.dev.total, free=h.dev.total - h.dev.used
            ),
        }
        for kind in ("Compute", "Graphics"):
            for suffix in ("_v3", "_v2", ""):
                funcs[f"nvmlDeviceGet{kind}RunningProcesses{suffix}"] = proc_list(kind.lower())
        for name, fn in funcs.items():
            if name not in self.missing:
                setattr(m, name, self._counted(name, fn))
        return m

    def _counted(self, name: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            self.calls[name] += 1
            if name in self.raise_on:
                raise self.raise_on[name]
            return fn(*args)

        return call

    def _by_index(self, i: int) -> Handle:
        if not 0 <= i < len(self.devices):
            raise FakeNVMLError(2)
        return Handle(self.devices[i])

    def _by_pci(self, bus_id: str) -> Handle:
        # NVML parses the id; the fake accepts exactly its own spelling or the legacy one.
        for d in self.devices:
            if bus_id.upper() in (d.bus_id.upper(), d.bus_id.upper()[4:]):
                return Handle(d)
        raise FakeNVMLError(6)  # NOT_FOUND


A = Dev("00000000:81:00.0", "GPU-aaaaaaaa-0000-0000-0000-000000000001", "Fake A100")
B = Dev("00000000:41:00.0", "GPU-bbbbbbbb-0000-0000-0000-000000000002", "Fake H100")


@pytest.fixture
def fake(monkeypatch) -> FakeNvml:
    # Fresh devices per test: tests change their figures.
    f = FakeNvml([replace(A, compute=[], graphics=[]), replace(B, compute=[], graphics=[])])
    monkeypatch.setitem(sys.modules, "pynvml", f.module())
    return f


def install(monkeypatch, f: FakeNvml) -> None:
    """Re-install after changing `missing` (the module's attributes are fixed when built)."""
    monkeypatch.setitem(sys.modules, "pynvml", f.module())


# -- which device ------------------------------------------------------------------------


@pytest.mark.parametrize("nvml_lookup", [True, False], ids=["by-nvml-lookup", "by-scan"])
def test_matches_engine_device_by_pci_bus_id_when_indices_differ(monkeypatch, fake, nvml_lookup):
    # The engine's device is NVML's index 1 (CUDA_VISIBLE_DEVICES/ordering differ).
    if not nvml_lookup:
        fake.missing.add("nvmlDeviceGetHandleByPciBusId")
        install(monkeypatch, fake)
    probe = NvmlProbe(pci_bus_id="0000:41:00.0")
    assert probe.available and probe.reason is None
    assert probe.matched_by == "pci_bus_id"
    assert probe.name == "Fake H100"
    assert probe.pci_bus_id == "00000000:41:00.0"


@pytest.mark.parametrize(
    "spelling", ["0000:41:00.0", "00000000:41:00.0", "41:00.0", "0000:41:00.0\x00", " 00000000:41:00.0 "]
)
def test_bus_id_spellings_match(monkeypatch, fake, spelling):
    fake.missing.add("nvmlDeviceGetHandleByPciBusId")  # the scan compares normalised ids
    install(monkeypatch, fake)
    probe = NvmlProbe(pci_bus_id=spelling)
    assert probe.available and probe.name == "Fake H100"


def test_bus_id_normalisation():
    assert normalize_pci_bus_id("0000:41:00.0") == "00000000:41:00.0"
    assert normalize_pci_bus_id("00000000:41:00.0") == "00000000:41:00.0"
    assert normalize_pci_bus_id("0000:4A:1F.0") == normalize_pci_bus_id("00000000:4a:1f.0")
    assert normalize_pci_bus_id(b"00000000:41:00.0\x00") == "00000000:41:00.0"
    assert normalize_pci_bus_id("41:00.0") == "00000000:41:00.0"
    assert normalize_pci_bus_id("0001:41:00.0") != normalize_pci_bus_id("0000:41:00.0")
    for bad in ("", "gpu0", "0000:41:00", "0000:zz:00.0", None):
        assert normalize_pci_bus_id(bad) is None


def test_uuid_match(fake):
    probe = NvmlProbe(uuid="BBBBBBBB000000000000000000000002")  # CUDA's bytes as bare hex
    assert probe.available and probe.matched_by == "uuid" and probe.name == "Fake H100"
    assert normalize_uuid("GPU-bbbbbbbb-0000-0000-0000-000000000002") == "bbbbbbbb000000000000000000000002"


def test_uuid_used_when_pci_bus_id_not_found(fake):
    probe = NvmlProbe(pci_bus_id="0000:99:00.0", uuid="GPU-aaaaaaaa-0000-0000-0000-000000000001")
    assert probe.available and probe.matched_by == "uuid" and probe.name == "Fake A100"


def test_unknown_pci_bus_id_is_unavailable_and_index_not_used(fake):
    probe = NvmlProbe(0, pci_bus_id="0000:99:00.0")
    assert probe.available is False and probe.matched_by is None
    assert probe.reason == "nvml: no device with PCI bus id 0000:99:00.0"
    assert probe.sample() is None


def test_unreadable_pci_bus_id(fake):
    probe = NvmlProbe(pci_bus_id="cuda:0")
    assert probe.available is False and "unreadable PCI bus id" in (probe.reason or "")


def test_index_only_when_nothing_else_known(fake):
    probe = NvmlProbe(1)  # positional, as older callers pass it
    assert probe.available and probe.matched_by == "index" and probe.name == "Fake H100"
    missing = NvmlProbe(index=7)
    assert missing.available is False and (missing.reason or "").startswith("nvml: no device with index 7")


def test_no_device_named_and_disabled():
    probe = NvmlProbe()
    assert probe.available is False and probe.reason == "nvml: no device named" and probe.sample() is None
    off = NvmlProbe.disabled("backend is not CUDA")
    assert off.available is False and off.reason == "backend is not CUDA" and off.name is None


def test_no_nvml_library(monkeypatch):
    # `import pynvml` fails as it would where the package is missing.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    probe = NvmlProbe(pci_bus_id="0000:41:00.0")
    assert probe.available is False and probe.reason == "nvml: library not installed"
    assert probe.sample() is None


def test_no_driver(monkeypatch, fake):
    fake.raise_on["nvmlInit"] = FakeNVMLError(12)  # LIBRARY_NOT_FOUND
    probe = NvmlProbe(pci_bus_id="0000:41:00.0")
    assert probe.available is False and (probe.reason or "").startswith("nvml: init failed")


def test_constructor_never_raises(fake):
    fake.raise_on["nvmlDeviceGetCount"] = RuntimeError("boom")
    fake.raise_on["nvmlDeviceGetHandleByPciBusId"] = RuntimeError("boom")
    probe = NvmlProbe(pci_bus_id="0000:41:00.0")
    assert probe.available is False and probe.reason


def test_real_library_without_gpu_is_unavailable():
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() > 0:
            pytest.skip("this machine has a GPU")
    except ImportError:
        pass
    except Exception:
        pass  # no driver: what this test is for
    probe = NvmlProbe(pci_bus_id="0000:41:00.0")
    assert probe.available is False and (probe.reason or "").startswith("nvml:")
    assert probe.sample() is None


# -- whose memory ------------------------------------------------------------------------


def test_engine_pid_found_gives_process_scope(fake):
    fake.devices[1].compute = [(999, 3 * GiB), (4242, 5 * GiB)]
    fake.devices[1].used = 9 * GiB
    s = NvmlProbe(pci_bus_id="0000:41:00.0").sample(4242)
    assert s is not None
    assert (s.process_bytes, s.device_used_bytes, s.device_total_bytes) == (5 * GiB, 9 * GiB, 80 * GiB)
    assert s.scope == "process" and s.reported_bytes == 5 * GiB


def test_pid_not_listed_gives_device_scope(fake):
    # In a container NVML lists host pids: the engine's own pid is not among them.
    fake.devices[1].compute = [(31337, 5 * GiB)]
    fake.devices[1].used = 6 * GiB
    s = NvmlProbe(pci_bus_id="0000:41:00.0").sample(12)
    assert s is not None and s.process_bytes is None
    assert s.scope == "device" and s.reported_bytes == 6 * GiB


def test_graphics_processes_count(fake):
    fake.devices[1].graphics = [(4242, 2 * GiB)]
    s = NvmlProbe(pci_bus_id="0000:41:00.0").sample(4242)
    assert s is not None and s.scope == "process" and s.process_bytes == 2 * GiB


def test_same_process_in_both_lists_not_double_counted(fake):
    fake.devices[1].compute = [(4242, 2 * GiB)]
    fake.devices[1].graphics = [(4242, 2 * GiB)]
    s = NvmlProbe(pci_bus_id="0000:41:00.0").sample(4242)
    assert s is not None and s.process_bytes == 2 * GiB


def test_nspid_maps_namespace_pid_to_outer_pid(monkeypatch, tmp_path, fake):
    # The engine is pid 7 in its namespace and 4242 outside; NVML lists 4242.
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "status").write_text("Name:\tpython\nPid:\t7\nNSpid:\t4242\t7\nPPid:\t1\n")
    monkeypatch.setattr(nvml, "_PROC_ROOT", str(tmp_path))
    fake.devices[1].compute = [(4242, 5 * GiB)]
    assert nvml.pid_aliases(7) == {7, 4242}
    s = NvmlProbe(pci_bus_id="0000:41:00.0").sample(7)
    assert s is not None and s.scope == "process" and s.process_bytes == 5 * GiB
    assert nvml.pid_aliases(8) == {8}  # no status file: the pid alone


@pytest.mark.parametrize("figure", [None, NVML_VALUE_NOT_AVAILABLE])
def test_unknown_process_figure_falls_back_to_device(fake, figure):
    fake.devices[1].compute = [(4242, figure)]
    s = NvmlProbe(pci_bus_id="0000:41:00.0").sample(4242)
    assert s is not None and s.process_bytes is None and s.scope == "device"
    assert s.reported_bytes == fake.devices[1].used


# -- degrading per call ------------------------------------------------------------------


def test_v3_function_not_found_falls_back_to_v2_and_is_remembered(fake):
    fake.raise_on["nvmlDeviceGetComputeRunningProcesses_v3"] = FakeNVMLError(FUNCTION_NOT_FOUND)
    fake.devices[1].compute = [(4242, 5 * GiB)]
    probe = NvmlProbe(pci_bus_id="0000:41:00.0")
    for _ in range(3):
        s = probe.sample(4242)
        assert s is not None and s.scope == "process" and s.process_bytes == 5 * GiB
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 3


def test_bindings_without_v3_use_v2(monkeypatch, fake):
    fake.missing |= {"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3"}
    install(monkeypatch, fake)
    fake.devices[1].compute = [(4242, 5 * GiB)]
    s = NvmlProbe(pci_bus_id="0000:41:00.0").sample(4242)
    assert s is not None and s.scope == "process"
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 1


class NVMLLibraryMismatchError(Exception):
    """pynvml's unversioned wrappers raise this (no error code) when the function is missing."""


def test_all_process_lists_failing_still_gives_device_figures(fake):
    for kind in ("Compute", "Graphics"):
        for suffix in ("_v3", "_v2"):
            fake.raise_on[f"nvmlDeviceGet{kind}RunningProcesses{suffix}"] = FakeNVMLError(FUNCTION_NOT_FOUND)
        fake.raise_on[f"nvmlDeviceGet{kind}RunningProcesses"] = NVMLLibraryMismatchError("mismatch")
    fake.devices[1].compute = [(4242, 5 * GiB)]
    probe = NvmlProbe(pci_bus_id="0000:41:00.0")
    for _ in range(2):
        s = probe.sample(4242)
        assert s is not None and s.process_bytes is None and s.scope == "device"
        assert (s.device_used_bytes, s.device_total_bytes) == (1 * GiB, 80 * GiB)
    # Once none is found to exist, they are not asked again.
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 1


def test_process_list_other_error_degrades_that_sample_only(fake):
    fake.raise_on["nvmlDeviceGetComputeRunningProcesses_v3"] = FakeNVMLError(NO_PERMISSION)
    fake.devices[1].compute = [(4242, 5 * GiB)]
    probe = NvmlProbe(pci_bus_id="0000:41:00.0")
    s = probe.sample(4242)
    assert s is not None and s.scope == "device" and s.process_bytes is None
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 0  # an older call would fail alike
    del fake.raise_on["nvmlDeviceGetComputeRunningProcesses_v3"]
    s = probe.sample(4242)
    assert s is not None and s.scope == "process"


def test_memory_info_failing_gives_no_sample(fake):
    probe = NvmlProbe(pci_bus_id="0000:41:00.0")
    fake.raise_on["nvmlDeviceGetMemoryInfo"] = FakeNVMLError(15)  # GPU_IS_LOST
    assert probe.sample(4242) is None


# -- the monitor -------------------------------------------------------------------------


def _wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def test_monitor_samples_in_background(fake):
    dev = fake.devices[1]
    dev.compute = [(4242, 1 * GiB)]
    engine_pid: list[int | None] = [None]  # engine not started yet: this process, not listed
    monitor = VramMonitor(NvmlProbe(pci_bus_id="0000:41:00.0"), interval_sec=0.01, pid=lambda: engine_pid[0])
    try:
        assert monitor.scope() == "device" and monitor.used_bytes() == dev.used
        monitor.start()
        engine_pid[0] = 4242
        assert _wait_for(lambda: monitor.scope() == "process")
        assert monitor.used_bytes() == 1 * GiB
        dev.compute = [(4242, 3 * GiB)]
        assert _wait_for(lambda: monitor.used_bytes() == 3 * GiB)
    finally:
        monitor.close()
    assert not monitor._thread.is_alive()


def test_monitor_survives_pid_callable_failing(fake):
    def pid() -> int:
        raise RuntimeError("engine restarting")

    monitor = VramMonitor(NvmlProbe(pci_bus_id="0000:41:00.0"), pid=pid)
    assert monitor.scope() == "device" and monitor.used_bytes() == fake.devices[1].used


def test_monitor_without_gpu_reads_none():
    monitor = VramMonitor(NvmlProbe.disabled("no GPU"))
    monitor.start()  # no thread without a GPU; must not raise
    assert monitor.used_bytes() is None and monitor.scope() is None
    assert monitor.refresh() is None
    monitor.close()
