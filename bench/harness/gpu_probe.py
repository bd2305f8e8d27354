"""Whether an NVIDIA GPU is usable by the llama.cpp build this Python imports, and what it is.

Used by the GPU check (`python -m bench.gpu`) and by tests/gpu, which skip with
the reason when it is not. Two things must hold: the build offloads to a GPU
(`llama_supports_gpu_offload()`, false for a CPU build or a CUDA build whose
runtime finds no device) and NVML sees a device (the driver and its library),
since every VRAM figure comes from NVML.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GpuProbe:
    llama_cpp_version: str | None = None
    llama_cpp_path: str | None = None
    llama_cpp_error: str | None = None  # the import failed (a missing CUDA runtime library, say)
    offload: bool = False  # llama_supports_gpu_offload(): true for any GPU backend, not only CUDA
    ggml_gpus: list[dict[str, Any]] | None = None  # ggml's registry: backend, name, pci_bus_id; None: unread
    system_info: str | None = None  # llama.cpp's own line: backends and CPU features
    nvml_error: str | None = None
    driver: str | None = None
    cuda_driver: str | None = None  # the CUDA version the driver supports
    devices: list[dict[str, Any]] = field(default_factory=list)  # index, name, pci_bus_id, memory_total_bytes
    nvidia_smi: str | None = None  # its path, when on PATH

    @property
    def cuda(self) -> bool:
        """The build's registry lists a CUDA device (when it could be read at all)."""
        if self.ggml_gpus is None:
            return self.offload
        return any(g.get("backend") == "cuda" for g in self.ggml_gpus)

    @property
    def usable(self) -> bool:
        return self.offload and self.cuda and bool(self.devices)

    @property
    def reason(self) -> str | None:
        """Why no GPU is usable, naming each missing piece; None when one is."""
        if self.usable:
            return None
        missing = []
        if self.llama_cpp_error:
            missing.append(f"llama_cpp does not import ({self.llama_cpp_error})")
        elif not self.offload:
            missing.append(
                "the llama.cpp build has no GPU offload (llama_supports_gpu_offload() is false: "
                "a CPU build, or a CUDA build that finds no device or runtime library)"
            )
        elif not self.cuda:
            backends = sorted({g.get("backend") for g in self.ggml_gpus or ()})
            missing.append(f"the llama.cpp build offloads to {', '.join(backends) or 'no device'}, not CUDA")
        if not self.devices:
            smi = "nvidia-smi is on PATH" if self.nvidia_smi else "no nvidia-smi on PATH"
            missing.append(f"NVML finds no NVIDIA device ({self.nvml_error or 'none listed'}; {smi})")
        return "; ".join(missing)

    def device(self, index: int) -> dict[str, Any] | None:
        return next((d for d in self.devices if d["index"] == index), None)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cuda"] = self.cuda
        out["usable"] = self.usable
        out["reason"] = self.reason
        return out


def probe() -> GpuProbe:
    p = GpuProbe(nvidia_smi=shutil.which("nvidia-smi"))
    _probe_llama(p)
    _probe_nvml(p)
    return p


def _probe_llama(p: GpuProbe) -> None:
    try:
        import llama_cpp
    except Exception as exc:  # OSError from a library the build links and the loader cannot find
        p.llama_cpp_error = f"{type(exc).__name__}: {exc}"
        return
    p.llama_cpp_version = getattr(llama_cpp, "__version__", None)
    p.llama_cpp_path = str(getattr(llama_cpp, "__file__", None))
    try:
        llama_cpp.llama_backend_init()
        p.offload = bool(llama_cpp.llama_supports_gpu_offload())
        info = llama_cpp.llama_print_system_info()
        p.system_info = (info.decode(errors="replace") if isinstance(info, bytes) else str(info)).strip(" |")
    except Exception as exc:
        p.llama_cpp_error = f"{type(exc).__name__}: {exc}"
        return
    try:
        from worker_orcd.engine import devices

        p.ggml_gpus = [d.describe() for d in devices.gpus()]
    except Exception:  # the registry's C API moved: judge by the offload flag alone
        p.ggml_gpus = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _probe_nvml(p: GpuProbe) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no package, no driver library, driver not loaded
        p.nvml_error = f"{type(exc).__name__}: {exc}"
        return
    try:
        p.driver = _text(pynvml.nvmlSystemGetDriverVersion())
        try:
            v = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
            p.cuda_driver = f"{v // 1000}.{(v % 1000) // 10}"
        except Exception:
            pass
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            device: dict[str, Any] = {"index": i, "name": _text(pynvml.nvmlDeviceGetName(h))}
            try:
                device["pci_bus_id"] = _text(pynvml.nvmlDeviceGetPciInfo(h).busId)
            except Exception:
                device["pci_bus_id"] = None
            try:
                device["memory_total_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
            except Exception:
                device["memory_total_bytes"] = None
            p.devices.append(device)
    except Exception as exc:
        p.nvml_error = f"{type(exc).__name__}: {exc}"
