"""Which device the engine runs on (WO-GPU-1, WO-GPU-2): the registry's, not a guess."""

from __future__ import annotations

import llama_cpp
import pytest

from worker_orcd.cli import build_parser
from worker_orcd.engine import devices
from worker_orcd.engine.model import init_backend

CUDA0 = devices.Device(0, "cuda", "CUDA0", "NVIDIA H200", "0000:c1:00.0", 141 << 30, handle=11)
METAL = devices.Device(0, "metal", "MTL0", "Apple M3", None, 64 << 30, handle=12)


def test_this_build_lists_what_it_offloads_to():
    """A build without GPU offload lists no GPU, and so runs on the CPU whatever
    --gpu-device says; with offload, every GPU it lists names its backend."""
    init_backend()
    found = devices.gpus()
    if not llama_cpp.llama_supports_gpu_offload():
        assert found == []
        assert devices.pick(0) is None and devices.pick(3) is None
    for device in found:
        assert device.backend and device.backend != "cpu"
    assert devices.pick(None) is None


def test_the_ordinal_counts_this_builds_gpus(monkeypatch):
    second = devices.Device(1, "cuda", "CUDA1", "NVIDIA H200", "0000:c2:00.0", 141 << 30, handle=13)
    monkeypatch.setattr(devices, "gpus", lambda: [CUDA0, second])
    assert devices.pick(1) is second and devices.pick(0) is CUDA0
    assert devices.pick(None) is None  # --gpu-device none: the CPU, even on a GPU build
    with pytest.raises(devices.NoSuchDevice, match="sees 2 GPU"):
        devices.pick(2)


def test_a_metal_device_is_not_called_cuda(monkeypatch):
    monkeypatch.setattr(devices, "gpus", lambda: [METAL])
    assert devices.pick(0).backend == "metal"


def test_describe_leaves_out_the_pointer():
    assert devices.Device.describe(CUDA0) == {
        "ordinal": 0,
        "backend": "cuda",
        "name": "CUDA0",
        "description": "NVIDIA H200",
        "pci_bus_id": "0000:c1:00.0",
        "memory_total_bytes": 141 << 30,
    }


@pytest.mark.parametrize("text, value", [("none", None), ("None", None), ("0", 0), ("2", 2)])
def test_gpu_device_flag(text, value):
    assert build_parser().parse_args(["serve", "--gpu-device", text]).gpu_device == value


def test_defaults_offload_to_the_first_gpu_with_an_auto_chunk():
    args = build_parser().parse_args(["serve"])
    assert args.gpu_device == 0 and args.prefill_chunk is None
    assert args.spare_context == "auto" and args.flash_attn == "auto" and args.stop_budget_ms == 20.0


@pytest.mark.parametrize("flag", [["--gpu-device", "-1"], ["--gpu-device", "cuda"], ["--prefill-chunk", "0"]])
def test_bad_values_are_refused(flag, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", *flag])
