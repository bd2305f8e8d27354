"""Per-job llama contexts, with one spare made in advance where memory allows.

A job's KV cache and compute buffers belong to it alone: it gets a fresh
context and the context is freed (`llama_free`, which returns the buffers)
before the job's terminal event. Making a context costs tens of milliseconds
(more with a larger n_ctx), so a helper thread keeps one spare ready: the next
job takes it at once and the helper makes the one after while that job runs.
The spare costs a second KV cache and compute buffers, which on a GPU may be
memory a larger n_ctx or model needs: `--spare-context off` makes each job's
context when the job starts, and `auto` keeps the spare unless it would take
more than an eighth of the GPU's free memory. At rest the worker holds the
model plus the spare, if any; that is the idle baseline every job returns to.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp

from worker_orcd.engine import devices, llama_log
from worker_orcd.engine.model import Model
from worker_orcd.log import log_event

CANCEL_POLL_SEC = 0.002  # how often a job waiting for the spare context looks at its cancel flag
CPU_UBATCH = 128  # most prompt tokens per graph on the CPU (see _ubatch)
SPARE_SHARE_OF_FREE_VRAM = 1 / 8  # auto keeps the spare when it costs at most this
FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
SPARE_MODES = ("auto", "on", "off")


class ContextUnavailable(Exception):
    """llama.cpp could not make a context (out of memory, most likely)."""


@dataclass(frozen=True, slots=True)
class ContextSettings:
    n_ctx: int
    n_batch: int  # the prefill chunk: most tokens per llama_decode call
    n_threads: int
    offload_kqv: bool = True
    flash_attn: str = "auto"  # auto | on | off


def new_context(model: Model, settings: ContextSettings, *, n_seq: int = 1) -> int:
    """A context of `settings.n_ctx` cells; `n_seq` > 1: that many sequences share them in one
    unified KV cache (engine.slots), each of which may take any free cell."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = settings.n_ctx
    params.n_batch = settings.n_batch
    params.n_ubatch = _ubatch(model, settings.n_batch)
    params.n_seq_max = n_seq
    if n_seq > 1:
        params.kv_unified = True
    params.n_threads = settings.n_threads
    params.n_threads_batch = settings.n_threads
    params.offload_kqv = settings.offload_kqv
    params.no_perf = False
    params.flash_attn_type = FLASH_ATTN[settings.flash_attn]
    errors = llama_log.error_count()
    ctx = llama_cpp.llama_init_from_model(model.ptr, params)
    if not ctx:
        reason = llama_log.errors_during(errors)
        raise ContextUnavailable(
            f"llama.cpp could not create a context of n_ctx={settings.n_ctx}" + (f" ({reason})" if reason else "")
        )
    return ctx


def _ubatch(model: Model, n_batch: int) -> int:
    """Tokens per graph: on the CPU the abort callback runs between graph nodes, and a
    node's time grows with this; a smaller graph stops a prompt sooner for a little prompt
    speed (bench/RESULTS.md, "What the design choices measured"). CUDA never calls the callback."""
    return n_batch if model.info.backend != "cpu" else min(n_batch, CPU_UBATCH)


def free_context(ctx: int) -> None:
    llama_cpp.llama_free(ctx)


@dataclass(frozen=True, slots=True)
class SpareCost:
    """What the spare context costs, measured when the first context was made."""

    mode: str  # auto | on | off
    enabled: bool
    bytes: int | None  # the growth of the memory it lives in when one context was made
    memory: str  # "vram" (the GPU's, as its backend reports free memory) | "ram" (resident)
    reason: str

    def health(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "enabled": self.enabled,
            "bytes": self.bytes,
            "memory": self.memory,
            "reason": self.reason,
        }


class ContextPool:
    def __init__(self, model: Model, settings: ContextSettings, spare: str = "on") -> None:
        if spare not in SPARE_MODES:
            raise ValueError(f"spare context: expected one of {', '.join(SPARE_MODES)}, got {spare!r}")
        self._model = model
        self.settings = settings
        self._cond = threading.Condition()
        self._spare: int | None = None
        self._want_spare = False
        self._closed = False
        self.last_make_ms: float | None = None
        # The first context is made either way: it tells what one costs.
        ctx, cost = self._measured_make()
        self.spare = _decide_spare(spare, cost, model)
        self._helper: threading.Thread | None = None
        if self.spare.enabled:
            self._spare = ctx  # the idle baseline includes one spare
            self._helper = threading.Thread(target=self._refill, name="context-spare", daemon=True)
            self._helper.start()
        else:
            free_context(ctx)

    def take(self, cancelled: Callable[[], bool] | None = None, *, refill: bool = True) -> int | None:
        """A fresh context for one job; waits only if the spare is still being made.

        A job shorter than making a context finds the spare still in the works;
        if `cancelled()` turns true meanwhile, None is returned at once (nothing
        is taken), so a cancel is not held up by the wait (stop_ms budget).
        With `refill=False` the next spare is not started yet: the caller asks
        for it with `refill()` once the job can spare the CPU.
        """
        if not self.spare.enabled:
            return self._make()
        with self._cond:
            while self._spare is None and self._want_spare and not self._closed:
                if cancelled is not None and cancelled():
                    return None
                self._cond.wait(None if cancelled is None else CANCEL_POLL_SEC)
            ctx, self._spare = self._spare, None
            if refill:
                self._want_spare = True
                self._cond.notify_all()
        if ctx is None:  # the helper failed to make one: try here, report why if not
            ctx = self._make()
        return ctx

    @property
    def making(self) -> bool:
        """Whether the next spare is being made now (it takes a core while it is)."""
        return self._want_spare

    def refill(self) -> None:
        """Start making the next spare, unless one is ready or on its way (or there is none)."""
        if not self.spare.enabled:
            return
        with self._cond:
            if self._spare is None and not self._want_spare and not self._closed:
                self._want_spare = True
                self._cond.notify_all()

    def release(self, ctx: int) -> None:
        """Free a job's context: KV cache and buffers go back to the system."""
        free_context(ctx)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._helper is not None:
            self._helper.join(timeout=10)
        with self._cond:
            spare, self._spare = self._spare, None
        if spare is not None:
            free_context(spare)

    def _make(self) -> int:
        t0 = time.perf_counter()
        ctx = new_context(self._model, self.settings)
        self.last_make_ms = round((time.perf_counter() - t0) * 1000.0, 3)
        return ctx

    def _measured_make(self) -> tuple[int, int | None]:
        before = _memory_in_use(self._model)
        ctx = self._make()
        after = _memory_in_use(self._model)
        return ctx, (after - before if before is not None and after is not None else None)

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not (self._want_spare or self._closed):
                    self._cond.wait()
                if self._closed:
                    return
            try:
                ctx: int | None = self._make()
            except ContextUnavailable as exc:
                log_event("context_spare_failed", error=str(exc))
                ctx = None
            with self._cond:
                self._want_spare = False
                if self._closed:
                    if ctx is not None:
                        free_context(ctx)
                    return
                self._spare = ctx
                self._cond.notify_all()


def _memory_in_use(model: Model) -> int | None:
    """Bytes in use where a context's buffers go: the GPU's (total − free, as its backend
    says) or this process's resident memory."""
    if model.device is not None:
        try:
            return model.device.memory_total_bytes - devices.free_memory(model.device)
        except Exception:  # a backend that cannot say: the cost is unknown, not fatal
            return None
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _decide_spare(mode: str, cost: int | None, model: Model) -> SpareCost:
    memory = "vram" if model.device is not None else "ram"
    if mode != "auto":
        return SpareCost(mode, mode == "on", cost, memory, "flag")
    if model.device is None:
        return SpareCost(mode, True, cost, memory, "on the CPU: a context is small beside the machine's memory")
    if cost is None:
        return SpareCost(mode, True, cost, memory, "its cost could not be measured")
    try:
        free = devices.free_memory(model.device)
    except Exception:
        return SpareCost(mode, True, cost, memory, "the GPU's free memory could not be read")
    if cost <= free * SPARE_SHARE_OF_FREE_VRAM:
        return SpareCost(mode, True, cost, memory, "at most an eighth of the GPU's free memory")
    return SpareCost(mode, False, cost, memory, f"more than an eighth of the GPU's free memory ({free} bytes)")
