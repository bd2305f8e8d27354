"""What the numbers were measured on: CPU, cores, memory, GPU, load, versions, and
whether the engine used its extra CPU buffer types (they change the kernels that run)."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from worker_orcd.engine.cpu_features import cpu_flags, cpu_model


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe(gpu_name: str | None, cpu_extra_buffers: dict[str, Any] | None = None) -> dict[str, Any]:
    """`cpu_extra_buffers`: the worker's setting as its /health reports it; every side ran with it."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "cpu": cpu_model(),
        "cpu_flags": list(cpu_flags()),  # the AMX flags, when the CPU advertises them
        "cpu_extra_buffers": cpu_extra_buffers,
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "gpu": gpu_name,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama_cpp_python": _version("llama-cpp-python"),
        "worker_orcd": _version("worker-orcd"),
        "load_average_at_start": load_average(),
    }
