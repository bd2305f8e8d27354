"""The GPU check's pieces that need no GPU: installing a build, finding CUDA's libraries,
the baselines' flags, the budget, and how a missing GPU is explained."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from bench import gpu
from bench.harness.gpu_probe import GpuProbe


def _tree_tar(path: Path, prefix: str) -> Path:
    """A .tar.gz of an installed llama_cpp/ tree under `prefix`, with a soname link."""
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, data: bytes = b"") -> None:
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("llama_cpp/__init__.py", b"__version__ = 'test'\n")
        add("llama_cpp/lib/libllama.so.0", b"\x7fELF")
        link = tarfile.TarInfo(prefix + "llama_cpp/lib/libllama.so")
        link.type, link.linkname = tarfile.SYMTYPE, "libllama.so.0"
        tar.addfile(link)
    return path


@pytest.mark.parametrize("prefix", ["", "site-packages/"])
def test_a_tree_is_extracted_once_and_its_root_found(tmp_path, prefix):
    build = _tree_tar(tmp_path / "llama.tar.gz", prefix)
    info = gpu.install_build(build, None, tmp_path / "work")
    root = Path(info["site_dir"])
    assert (root / "llama_cpp" / "__init__.py").is_file()
    assert (root / "llama_cpp" / "lib" / "libllama.so").is_symlink()
    assert info["source"] == str(build) and len(info["sha256"]) == 64
    # The same file again: the install is reused, not redone.
    (root / "llama_cpp" / "marker").write_text("kept")
    assert gpu.install_build(build, None, tmp_path / "work") == json.loads(json.dumps(info))
    assert (root / "llama_cpp" / "marker").read_text() == "kept"


def test_a_build_of_another_kind_is_refused(tmp_path):
    build = tmp_path / "llama.zip"
    build.write_bytes(b"PK")
    with pytest.raises(SystemExit, match="takes a .whl"):
        gpu.install_build(build, None, tmp_path / "work")


def test_cuda_libraries_are_found_newest_first(tmp_path):
    for name in ("cu12", "cu13", "cublas"):
        lib = tmp_path / "nvidia" / name / "lib"
        lib.mkdir(parents=True)
        (lib / f"lib{name}.so.1").write_bytes(b"")
    (tmp_path / "nvidia" / "empty" / "lib").mkdir(parents=True)  # no library: not a candidate
    found = [d for d in gpu.nvidia_lib_dirs([tmp_path]) if d.startswith(str(tmp_path))]
    assert found == [str(tmp_path / "nvidia" / n / "lib") for n in ("cu13", "cu12", "cublas")]


def test_baselines_get_the_workers_chunk_and_no_gpu_none():
    args = ["--threads", "1", "--gpu-device", "none", "--cancel-deadline-ms", "500"]
    health = {"prefill_chunk": {"tokens": 96, "mode": "auto"}}
    assert gpu._baseline_args(args, health) == [
        "--threads", "1", "--cancel-deadline-ms", "500", "--prefill-chunk", "96"
    ]
    assert gpu._baseline_args(["--gpu-device", "0"], {})[-2:] == ["--prefill-chunk", str(gpu.FALLBACK_PREFILL_CHUNK)]
    assert gpu._baseline_args(["--prefill-chunk", "64"], health) == ["--prefill-chunk", "64"]


def test_budget_gives_a_part_what_is_left_or_nothing():
    budget = gpu.Budget(gpu.REPORT_RESERVE_S + 30)
    assert 25 < budget.part(1000) <= 30
    assert budget.part(10) == 10
    assert budget.part(10, floor=60) is None


def test_a_missing_gpu_is_explained_piece_by_piece():
    bare = GpuProbe(llama_cpp_version="0.3.36", nvml_error="NVMLError_LibraryNotFound")
    assert not bare.usable
    assert "no GPU offload" in bare.reason and "NVML finds no NVIDIA device" in bare.reason
    assert "no nvidia-smi" in bare.reason

    device = {"index": 0, "name": "NVIDIA H200", "pci_bus_id": "00000000:41:00.0"}
    vulkan = GpuProbe(offload=True, ggml_gpus=[{"ordinal": 0, "backend": "vulkan"}], devices=[device])
    assert not vulkan.usable and "vulkan, not CUDA" in vulkan.reason

    cuda = GpuProbe(offload=True, ggml_gpus=[{"ordinal": 0, "backend": "cuda", "pci_bus_id": "0000:41:00.0"}],
                    devices=[device])
    assert cuda.usable and cuda.reason is None
    assert cuda.as_dict()["usable"] is True


def test_the_gpu_is_matched_by_bus_id_not_index():
    probe = GpuProbe(
        offload=True,
        ggml_gpus=[{"ordinal": 0, "backend": "cuda", "pci_bus_id": "0000:c1:00.0"}],
        devices=[
            {"index": 0, "name": "A", "pci_bus_id": "00000000:41:00.0"},
            {"index": 1, "name": "B", "pci_bus_id": "00000000:C1:00.0"},
        ],
    )
    assert gpu.gpu_device(probe, 0)["name"] == "B"
    assert gpu.gpu_device(GpuProbe(devices=probe.devices), 1)["name"] == "B"  # no registry: NVML's index
    assert gpu.gpu_device(probe, 5) is None
