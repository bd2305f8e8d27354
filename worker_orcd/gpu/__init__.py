"""NVML: what the GPU says about memory. Absent GPU or library → None, never a crash."""
