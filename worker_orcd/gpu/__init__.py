"""NVML: what an NVIDIA GPU says about memory. Absent GPU, driver or library → None, never a crash."""

from worker_orcd.gpu.nvml import NvmlProbe, VramMonitor, VramSample

__all__ = ["NvmlProbe", "VramMonitor", "VramSample"]
