"""The worker's front, assembled: ledger, jobs, the engine's supervisor, metrics, VRAM.

This is the one place the rooms meet. The HTTP app gets a Worker and asks it
for what it needs through a small facade (`submit`, `cancel`, `find`,
`tokenize_on_loop`, `health`, `drain`, the ledger's lookups, the counters): the
routes reach nothing behind it. The front never loads the model: the engine
process does (`worker_orcd.supervisor`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgspec.structs import asdict

from worker_orcd.api.health import Health
from worker_orcd.api.records import JobRecord, JobSummary
from worker_orcd.channel.messages import ModelInfo
from worker_orcd.config import WorkerConfig
from worker_orcd.engine.gguf import check_model_file
from worker_orcd.gpu.nvml import NvmlProbe, VramMonitor
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.early_cancels import EarlyCancels
from worker_orcd.jobs.job import Job, Phase
from worker_orcd.jobs.ledger import Ledger
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobRegistry
from worker_orcd.log import log_event
from worker_orcd.metrics import WorkerMetrics
from worker_orcd.supervisor.supervisor import EngineSupervisor


class Worker:
    def __init__(self, config: WorkerConfig, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`loop`: the event loop that reads the engine's channel (the HTTP server's)."""
        self.config = config
        check_model_file(config.model_path)  # a bad path fails fast, before the engine starts
        self.ledger = Ledger(config.ledger_path, max_jobs=config.ledger_max_jobs)
        self.manager = JobManager(
            JobQueue(config.max_queue),
            JobRegistry(),
            early_cancels=EarlyCancels(config.early_cancel_sec),
            max_jobs_per_tenant=config.tenant_job_limit,
        )
        self.engine = EngineSupervisor(config, self.manager.queue, loop=loop)
        self.manager.add_listener(self.ledger.record)
        self.manager.add_listener(self.engine.notify)  # a cancel starts the engine's hard deadline
        self.vram = VramMonitor(NvmlProbe.disabled("not a CUDA device"))
        self.metrics = WorkerMetrics(self._gauges)
        self.manager.add_finish_listener(self.metrics.job_finished)
        self.started = time.monotonic()
        self.accepting = True
        # Set by the server: how POST /shutdown asks the process to stop.
        self.request_shutdown: Callable[[], None] | None = None

    def start(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Start the engine (raises EngineStartFailed) and the VRAM readings."""
        self.engine.start(stop_requested)
        gpu = self.engine.info.gpu if self.engine.info else None
        if gpu is not None and gpu["backend"] == "cuda":  # NVML knows NVIDIA's devices only
            # By the bus id the engine's device has: NVML's indices are not CUDA's.
            probe = (
                NvmlProbe(pci_bus_id=gpu["pci_bus_id"]) if gpu.get("pci_bus_id") else NvmlProbe(self.config.gpu_device)
            )
            self.vram = VramMonitor(probe, pid=lambda: self.engine.engine_pid)
        self.vram.start()

    # -- the facade the routes use ----------------------------------------------------------

    @property
    def model(self) -> ModelInfo:
        """The loaded model as the engine described it: name, vocab_size, backend, …"""
        return self.engine.model

    @property
    def model_path(self) -> Path:
        return self.config.model_path

    @property
    def n_ctx(self) -> int:
        return self.config.n_ctx

    @property
    def keyed(self) -> bool:
        """Whether callers need API keys."""
        return self.config.keyed

    def slot_jobs(self) -> list[tuple[int, Job]]:
        """Each busy slot and its job, by slot (a copy)."""
        return self.engine.slot_jobs()

    async def tokenize_on_loop(
        self, prompt: str, stops: tuple[str, ...], on_thread: Callable[..., Any]
    ) -> tuple[list[int], list[int]]:
        """The prompt's tokens and each stop string's length in tokens (in the engine), asked
        from the event loop with no thread while the engine is ready; `on_thread` runs a
        blocking call (a restarting engine is waited for there). Raises EngineUnavailable."""
        texts = [(prompt, True), *((s, False) for s in stops)]
        tokens = await self.engine.tokenize_on_loop(texts, on_thread)
        return tokens[0], [len(t) for t in tokens[1:]]

    def submit(self, job: Job) -> None:
        self.manager.submit(job)

    def cancel(self, tenant: str, job_id: str, reason: CancelReason) -> Phase | None:
        """A cancel by id (kept for a job still on its way when unknown), counted."""
        phase = self.manager.cancel(tenant, job_id, reason)
        self.metrics.cancel_requested(phase)
        return phase

    def cancel_job(self, job: Job, reason: CancelReason) -> Phase:
        """A cancel of a job in hand (its client went away), counted."""
        phase = self.manager.cancel_job(job, reason)
        self.metrics.cancel_requested(phase)
        return phase

    def rejected(self) -> None:
        """A job request refused before it became a job: counted."""
        self.metrics.rejected()

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    # The ledger's lookups block (a file): the routes run them through their offload.

    def on_record(self, tenant: str, job_id: str) -> bool:
        """Whether the ledger has a job with this id (a past one, maybe of a previous run)."""
        return self.ledger.exists(tenant, job_id)

    def record_of(self, tenant: str, job_id: str) -> JobRecord | None:
        return self.ledger.get(tenant, job_id)

    def recent_records(self, tenant: str, state: str | None, limit: int) -> list[JobSummary]:
        self.ledger.flush()
        return self.ledger.list(tenant, state=state, limit=limit)

    def find(self, tenant: str, job_id: str) -> Job | None:
        return self.manager.find(tenant, job_id)

    def queue_position(self, job: Job) -> int | None:
        """How many jobs will start before this one; None once it is no longer waiting."""
        return self.manager.queue.position(job)

    def owned_by_other(self, tenant: str, job_id: str) -> bool:
        """Whether another tenant has a job with this id in memory (for audit logs only)."""
        return self.manager.registry.owned_by_other(tenant, job_id)

    @property
    def queue_depth(self) -> int:
        return len(self.manager.queue)

    @property
    def queue_capacity(self) -> int:
        return self.manager.queue.capacity

    @property
    def ready(self) -> bool:
        """Whether a job sent now would be taken and run."""
        return self.accepting and self.engine.state == "ready" and self.manager.queue.has_room()

    def health(self) -> Health:
        """Cached state only: never waits for the engine or the GPU. Everything shown, `active_job`
        included: `worker_orcd.http.health` trims it for the caller."""
        info = self.engine.model
        ready = self.engine.info
        slots = self.slot_jobs()
        running = [job for _, job in slots]
        cells = self._cells(slots)
        engine = self.engine.health()
        vram = self.vram.latest  # one sample: the figure and its scope agree
        record = {
            "status": "healthy" if self.accepting and engine["state"] != "failed" else "unhealthy",
            "model": info.name,
            "resident": engine["state"] == "ready",
            "quant_kind": info.quant_kind,
            "vram_bytes_used": vram.reported_bytes if vram is not None else None,
            "vram_scope": vram.scope if vram is not None else None,
            "tokenizer_kind": info.tokenizer_kind,
            "vocab_size": info.vocab_size,
            "context_length": self.config.n_ctx,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "backend": info.backend,
            "gpu_device": self.config.gpu_device if info.backend != "cpu" else None,
            "gpu": self._gpu(ready.gpu if ready else None),
            "prefill_chunk": asdict(ready.prefill_chunk) if ready else None,
            "spare_context": ready.spare_context if ready else None,
            "flash_attn": ready.flash_attn if ready else None,
            "threads": self.engine.threads,
            "engine_nice": ready.nice if ready else None,
            "active_job": running[0].job_id if running else None,
            "active_jobs": [job.job_id for job in running],
            "parallel": self.config.parallel,
            "slots_busy": len(running),
            "slots": [_slot_view(slot, job, cells.get(slot)) for slot, job in slots],
            "kv_cells": self._cells_in_use(cells),
            "batch": _batch_view(ready.slots) if ready and ready.slots else None,
            "queue_depth": self.queue_depth,
            "cpu_extra_buffers": ready.cpu_extra_buffers if ready else None,
            "engine": engine,
            "busy": bool(running),
            "ready": self.ready,
        }
        return Health.model_validate(record).owned({job.job_id: job.tenant for job in running})

    def _gpu(self, device: dict[str, Any] | None) -> dict[str, Any] | None:
        """The engine's GPU as ggml names it, and how NVML found it (or why not)."""
        if device is None:
            return None
        probe = self.vram.probe
        nvml = {"available": probe.available, "matched_by": probe.matched_by, "reason": probe.reason}
        return {**device, "nvml": nvml}

    def drain(self, grace_sec: float) -> None:
        """Stop taking jobs and end every job with a terminal event.

        Queued jobs end at once with WORKER_SHUTDOWN; the running job gets
        `grace_sec` to finish, then is cancelled (its memory released as for any
        cancel, by force past the hard deadline), as is a job the dispatcher took
        from the queue just before it closed. Returns when the dispatcher has stopped.
        """
        self._close_queue()
        if not self.engine.join(timeout=grace_sec):
            self.engine.stop_jobs(CancelReason.SHUTDOWN)
            self.engine.join(timeout=self.config.cancel_deadline_ms / 1000.0 + 30)

    def stop_jobs(self) -> None:
        """Without waiting: no new jobs, and every job cancelled with WORKER_SHUTDOWN (the
        server stops at once: a second signal, or uvicorn ending on its own)."""
        self._close_queue()
        self.engine.stop_jobs(CancelReason.SHUTDOWN)

    def _close_queue(self) -> None:
        first, self.accepting = self.accepting, False
        ended = self.manager.end_queued(CancelReason.SHUTDOWN)
        if first:
            log_event("shutdown_draining", queued_ended=len(ended))

    def close(self) -> None:
        """End the engine process (after `drain`) and close the ledger."""
        self.vram.close()
        self.engine.close()
        self.ledger.close()

    def _gauges(self) -> dict[str, float | None]:
        slots = self.slot_jobs()  # one locked copy: the busy count and the cells are the same jobs'
        return {
            "uptime": time.monotonic() - self.started,
            "queue_depth": len(self.manager.queue),
            "vram_bytes": self.vram.used_bytes(),
            "slots": self.config.parallel,
            "slots_busy": len(slots),
            "kv_cells": self._cells_in_use(self._cells(slots)),
        }

    def _cells(self, slots: list[tuple[int, Job]]) -> dict[int, int]:
        """Each busy slot's KV cells as the engine last wrote them (WO-SLOT-7); none with one slot."""
        if self.config.parallel == 1:
            return {}
        board = self.engine.board
        return {slot: board.cells(slot) for slot, _ in slots}

    def _cells_in_use(self, cells: dict[int, int]) -> int | None:
        """While jobs run, their slots' cells; otherwise what the engine said after the latest run."""
        return sum(cells.values()) if cells else self.engine.kv_cells


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


def _slot_view(slot: int, job: Job, cells: int | None) -> dict[str, Any]:
    return {
        "slot": slot,
        "job_id": job.job_id,
        "phase": job.phase.value,
        "tokens_out": job.tokens_out,
        "kv_cells": cells,
    }


def _batch_view(slots: dict[str, Any]) -> dict[str, Any]:
    return {name: slots[name] for name in ("kv_cells_total", "kv_unified", "step_tokens", "step_measured_ms")}
