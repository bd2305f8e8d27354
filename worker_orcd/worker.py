"""The worker, assembled: model, context pool, queue, registry, ledger, metrics,
inference thread and VRAM monitor.

This is the one place the rooms meet; the HTTP app gets a Worker and asks it
for what it needs.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from worker_orcd.config import WorkerConfig
from worker_orcd.engine import cpu_features
from worker_orcd.engine.contexts import ContextPool, ContextSettings
from worker_orcd.engine.faults import FaultPlan
from worker_orcd.engine.loop import InferenceLoop
from worker_orcd.engine.model import Model, check_model_file
from worker_orcd.gpu.nvml import NvmlProbe, VramMonitor
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.early_cancels import EarlyCancels
from worker_orcd.jobs.ledger import Ledger
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobRegistry
from worker_orcd.log import log_event
from worker_orcd.metrics import WorkerMetrics


class Worker:
    def __init__(self, config: WorkerConfig, *, faults: FaultPlan | None = None) -> None:
        self.config = config
        self.ledger = Ledger(config.ledger_path, max_jobs=config.ledger_max_jobs)
        check_model_file(config.model_path)  # a bad path fails fast, before any probe
        self.cpu_extra_buffers = cpu_features.decide(
            config.cpu_extra_buffers,
            model_path=config.model_path,
            state_dir=config.state_path,
            threads=config.threads,
            gpu_device=config.gpu_device,
        )
        self.model = Model(
            config.model_path,
            gpu_device=config.gpu_device,
            extra_buffers=self.cpu_extra_buffers.enabled,
        )
        # Logged once the model loaded: a model that cannot load reports only its own error.
        self.cpu_extra_buffers.log()
        self.pool = ContextPool(
            self.model,
            ContextSettings(
                n_ctx=config.n_ctx, n_batch=config.prefill_chunk, n_threads=config.threads
            ),
        )
        self.manager = JobManager(
            JobQueue(config.max_queue),
            JobRegistry(),
            early_cancels=EarlyCancels(config.early_cancel_sec),
            max_jobs_per_tenant=config.tenant_job_limit,
        )
        self.loop = InferenceLoop(
            self.model,
            self.pool,
            self.manager.queue,
            prefill_chunk=config.prefill_chunk,
            timeout_sec=config.inference_timeout_sec,
            faults=faults,
        )
        probe = NvmlProbe(config.gpu_device if self.model.info.backend == "cuda" else None)
        self.vram = VramMonitor(probe)
        self.metrics = WorkerMetrics(self._gauges)
        self.manager.add_listener(self.ledger.record)
        self.manager.add_finish_listener(self.metrics.job_finished)
        self.started = time.monotonic()
        self.accepting = True
        # Set by the server: how POST /shutdown asks the process to stop.
        self.request_shutdown: Callable[[], None] | None = None

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
            "cpu_extra_buffers": self.cpu_extra_buffers.health(),
        }

    def drain(self, grace_sec: float) -> None:
        """Stop taking jobs and end every job with a terminal event.

        Queued jobs end at once with WORKER_SHUTDOWN; the running job gets
        `grace_sec` to finish, then is cancelled (its memory released as for any
        cancel). Returns when the inference thread has stopped.
        """
        self.accepting = False
        ended = self.manager.end_queued(CancelReason.SHUTDOWN)
        log_event("shutdown_draining", queued_ended=len(ended))
        deadline = time.monotonic() + grace_sec
        # The inference thread exits once the queue is closed and its job has ended.
        while not self.loop.join(timeout=max(0.0, min(0.05, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                active = self.loop.active
                if active is not None:
                    self.manager.cancel_job(active, CancelReason.SHUTDOWN)
                self.loop.join(timeout=30)
                break

    def close(self) -> None:
        """Free everything; call after `drain`."""
        self.loop.close()
        self.vram.close()
        self.pool.close()
        self.model.close()
        self.ledger.close()

    def _gauges(self) -> dict[str, float | None]:
        return {
            "uptime": time.monotonic() - self.started,
            "queue_depth": len(self.manager.queue),
            "vram_bytes": self.vram.used_bytes(),
        }


class ShutdownOnce:
    """Runs a worker's drain at most once, on a thread, then calls `then`."""

    def __init__(self, worker: Worker, then: Callable[[], None]) -> None:
        self._worker = worker
        self._then = then
        self._lock = threading.Lock()
        self.started = False

    def __call__(self) -> None:
        with self._lock:
            if self.started:
                return
            self.started = True
        threading.Thread(target=self._run, name="shutdown", daemon=True).start()

    def _run(self) -> None:
        try:
            self._worker.drain(self._worker.config.shutdown_grace_sec)
        finally:
            self._then()
