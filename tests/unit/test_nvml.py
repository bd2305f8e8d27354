"""NVML without a GPU (WO-HEALTH-2): unavailable, no readings, no exception."""

from __future__ import annotations

import sys

import pytest

from worker_orcd.gpu.nvml import NvmlProbe, VramMonitor


def _has_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False


def test_no_device_asked():
    probe = NvmlProbe(None)
    assert probe.available is False and probe.sample() is None and probe.name is None


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
def test_no_gpu_reports_unavailable():
    probe = NvmlProbe(0)
    assert probe.available is False
    assert probe.sample() is None


def test_no_nvml_library(monkeypatch):
    # `import pynvml` fails as it would where the package is missing.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    probe = NvmlProbe(0)
    assert probe.available is False and probe.sample() is None


def test_nonexistent_device_index():
    probe = NvmlProbe(10_000)
    assert probe.available is False and probe.sample() is None


def test_monitor_without_gpu_reads_none():
    monitor = VramMonitor(NvmlProbe(None))
    monitor.start()  # no thread without a GPU; must not raise
    assert monitor.used_bytes() is None
    assert monitor.refresh() is None
    monitor.close()
