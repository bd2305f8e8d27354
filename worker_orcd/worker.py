"""The worker, assembled: model, context pool, queue, registry, inference thread, VRAM monitor.

This is the one place the rooms meet; the HTTP app gets a Worker and asks it
for what it needs.
"""

from __future__ import annotations

import time
from typing import Any

from worker_orcd.config import WorkerConfig
from worker_orcd.engine.contexts import ContextPool, ContextSettings
from worker_orcd.engine.loop import InferenceLoop
from worker_orcd.engine.model import Model
from worker_orcd.gpu.nvml import NvmlProbe, VramMonitor
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobRegistry


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.model = Model(config.model_path, gpu_device=config.gpu_device)
        self.pool = ContextPool(
            self.model,
            ContextSettings(
                n_ctx=config.n_ctx, n_batch=config.prefill_chunk, n_threads=config.threads
            ),
        )
        self.manager = JobManager(JobQueue(config.max_queue), JobRegistry())
        self.loop = InferenceLoop(
            self.model,
            self.pool,
            self.manager.queue,
            prefill_chunk=config.prefill_chunk,
            timeout_sec=config.inference_timeout_sec,
        )
        probe = NvmlProbe(config.gpu_device if self.model.info.backend == "cuda" else None)
        self.vram = VramMonitor(probe)
        self.started = time.monotonic()
        self.accepting = True

    def start(self) -> None:
        self.loop.start()
        self.vram.start()

    def health(self) -> dict[str, Any]:
        """Cached state only: never waits for the inference thread or the GPU."""
        info = self.model.info
        active = self.loop.active
        return {
            "status": "healthy" if self.accepting and self.model.ptr else "unhealthy",
            "model": info.name,
            "resident": bool(self.model.ptr),
            "quant_kind": info.quant_kind,
            "vram_bytes_used": self.vram.used_bytes(),
            "tokenizer_kind": info.tokenizer_kind,
            "vocab_size": info.vocab_size,
            "context_length": self.config.n_ctx,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "backend": info.backend,
            "gpu_device": self.config.gpu_device if info.backend == "cuda" else None,
            "active_job": active.job_id if active is not None else None,
            "queue_depth": len(self.manager.queue),
        }

    def close(self) -> None:
        """Free everything; the inference thread must have stopped."""
        self.loop.close()
        self.vram.close()
        self.pool.close()
        self.model.close()
