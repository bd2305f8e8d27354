"""The devices this build of llama.cpp can run on, as ggml's registry lists them.

`llama_supports_gpu_offload()` is true for CUDA, Metal, Vulkan and ROCm builds
alike, so the backend is never inferred from it: the engine picks its GPU from
the registry, hands llama.cpp exactly that device (`llama_model_params.devices`),
and reports the registry's name for it ("cuda", "metal", "vulkan", …) with the
device's PCI bus id, which is how the front finds the same GPU in NVML whatever
CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER say.
"""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

# enum ggml_backend_dev_type
DEVICE_CPU, DEVICE_GPU, DEVICE_IGPU, DEVICE_ACCEL = 0, 1, 2, 3


class _Caps(ctypes.Structure):
    _fields_ = [
        ("async_", ctypes.c_bool),
        ("host_buffer", ctypes.c_bool),
        ("buffer_from_host_ptr", ctypes.c_bool),
        ("events", ctypes.c_bool),
    ]


class _Props(ctypes.Structure):
    """struct ggml_backend_dev_props (ggml-backend.h)."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
        ("memory_free", ctypes.c_size_t),
        ("memory_total", ctypes.c_size_t),
        ("type", ctypes.c_int),
        ("device_id", ctypes.c_char_p),
        ("caps", _Caps),
    ]


@dataclass(frozen=True, slots=True)
class Device:
    """One GPU llama.cpp can offload to."""

    ordinal: int  # among this build's GPUs, in the registry's order: what --gpu-device counts
    backend: str  # the registry's name, lower case: "cuda", "metal", "vulkan", "rocm", …
    name: str  # ggml's device name, e.g. "CUDA0"
    description: str  # the driver's, e.g. "NVIDIA H200"
    pci_bus_id: str | None  # "0000:c1:00.0", lower case; None where the backend does not say
    memory_total_bytes: int
    handle: int  # ggml_backend_dev_t

    def describe(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["handle"]
        return fields


class NoSuchDevice(ValueError):
    """--gpu-device names a GPU this build does not see."""


@lru_cache(maxsize=1)
def ggml() -> Any:
    """libggml as llama_cpp loads it, with the signatures of the registry calls the engine
    makes (here and in engine.cpu_features) declared once."""
    from llama_cpp import _ggml

    lib = _ggml.libggml
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get_props.restype = None
    lib.ggml_backend_dev_get_props.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Props)]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_buft_name.restype = ctypes.c_char_p
    lib.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    return lib


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace")


def gpus() -> list[Device]:
    """The GPUs (discrete and integrated) this build sees; empty for a CPU build.

    Call after llama_backend_init(): the registry is filled when the backends load.
    """
    lib = ggml()
    found: list[Device] = []
    for index in range(lib.ggml_backend_dev_count()):
        handle = lib.ggml_backend_dev_get(index)
        props = _Props()
        lib.ggml_backend_dev_get_props(handle, ctypes.byref(props))
        if props.type not in (DEVICE_GPU, DEVICE_IGPU):
            continue
        reg = lib.ggml_backend_dev_backend_reg(handle)
        found.append(
            Device(
                ordinal=len(found),
                backend=_text(lib.ggml_backend_reg_name(reg)).lower() or "gpu",
                name=_text(props.name),
                description=_text(props.description),
                pci_bus_id=_text(props.device_id).lower() or None,
                memory_total_bytes=int(props.memory_total),
                handle=int(handle),
            )
        )
    return found


def pick(gpu_device: int | None) -> Device | None:
    """The GPU to offload to: the `gpu_device`-th of this build's GPUs; None for the CPU
    (asked for with None, or a build without GPUs). Raises NoSuchDevice for an ordinal
    this build does not have."""
    if gpu_device is None:
        return None
    available = gpus()
    if not available:
        return None
    if gpu_device >= len(available):
        seen = ", ".join(f"{d.ordinal}: {d.description or d.name}" for d in available)
        raise NoSuchDevice(f"--gpu-device {gpu_device}: this build sees {len(available)} GPU(s) ({seen})")
    return available[gpu_device]


def free_memory(device: Device) -> int:
    """The device's free memory now, as its backend reports it (cudaMemGetInfo on CUDA)."""
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    ggml().ggml_backend_dev_memory(device.handle, ctypes.byref(free), ctypes.byref(total))
    return int(free.value)


def device_list(device: Device | None) -> ctypes.Array:
    """llama_model_params.devices: exactly `device`, or none at all (NULL only), so that a
    GPU build left on the CPU offloads nothing, not even large prompt batches."""
    devices = (ctypes.c_void_p * 2)()
    devices[0] = device.handle if device is not None else None
    devices[1] = None
    return devices
