"""Sizing the prompt chunk from the stop budget.

A cancel that lands inside a prompt waits for the engine's next stop point.
On a GPU those are the chunk boundaries (the abort callback runs on the CPU
backend only), so a chunk must take at most the stop budget. On the CPU the
abort callback runs after every graph node, so what a cancel waits for is the
longest node, which grows with the tokens in one graph. Either way the chunk
is the largest whose wait stays within the budget, measured once at start on
this machine and model: chunks of 16, 32, 64, … tokens are evaluated from the
start of a fresh context until one's wait exceeds the budget (twice: one
slow evaluation may be another process's doing). On the CPU no graph holds more than CPU_UBATCH tokens, so
larger chunks would wait no longer and are not tried. A chunk deep in a long
prompt costs a little more than at the start (attention grows with position);
the choice and what was measured are logged and shown in /health.

With several slots a cancel of one job cannot abort a step its neighbours share:
it waits for the whole step. `choose_step` sizes that step the same way, by the
whole decode of 1, 2, 4, … tokens.
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import llama_cpp

from worker_orcd.engine.contexts import CPU_UBATCH, ContextSettings, free_context, new_context
from worker_orcd.engine.model import Model

T = TypeVar("T")

SMALLEST = 16
LARGEST = 4096
MEASURE_SEC = 3.0  # the measurement stops growing the chunk after this long


@dataclass(frozen=True, slots=True)
class ChunkChoice:
    tokens: int
    mode: str  # "auto" (measured) | "fixed" (--prefill-chunk N)
    budget_ms: float | None = None
    stop_points: str | None = None  # "graph nodes" (the CPU) | "chunks" (a GPU) | "steps": what was timed
    measured_ms: dict[int, float] = field(default_factory=dict)  # chunk → the longest wait in it

    def health(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "mode": self.mode,
            "budget_ms": self.budget_ms,
            "stop_points": self.stop_points,
            "measured_ms": {str(k): v for k, v in self.measured_ms.items()} or None,
        }


def fixed(tokens: int) -> ChunkChoice:
    return ChunkChoice(tokens, "fixed")


def choose(model: Model, settings: ContextSettings, budget_ms: float) -> ChunkChoice:
    """The largest power-of-two chunk (SMALLEST…LARGEST, at most n_ctx) in which a cancel
    waits at most `budget_ms`; SMALLEST if even that one's wait is longer."""
    return _on_a_thread_of_its_own(lambda: _measure(model, settings, budget_ms))


def choose_step(model: Model, settings: ContextSettings, budget_ms: float, most: int) -> ChunkChoice:
    """The largest power-of-two batch (1…`most`) whose whole decode takes at most `budget_ms`;
    1 if even that one takes longer."""
    return _on_a_thread_of_its_own(lambda: _measure(model, settings, budget_ms, smallest=1, most=most))


def warm_up(model: Model, settings: ContextSettings) -> None:
    """One small decode before serving, as `choose` does: with a fixed chunk too, the
    engine's first decode is not a job's."""

    def decode_once() -> None:
        ctx = new_context(model, dataclasses.replace(settings, n_batch=SMALLEST))
        try:
            _evaluate(ctx, llama_cpp.llama_get_memory(ctx), _filler(model, SMALLEST), SMALLEST, None)
        finally:
            free_context(ctx)

    _on_a_thread_of_its_own(decode_once)


def _on_a_thread_of_its_own(work: Callable[[], T]) -> T:
    """`work()` on a thread that ends with it. llama.cpp's CPU threads (an OpenMP team)
    belong to the thread that decodes; a team left on a thread that lives on (the
    engine's main thread) takes cores from every later decode."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # raised again in the caller
            result.append(exc)

    thread = threading.Thread(target=run, name="prefill-measure")
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _measure(
    model: Model, settings: ContextSettings, budget_ms: float, *, smallest: int = SMALLEST, most: int | None = None
) -> ChunkChoice:
    """`most` given: whole decodes are timed (a step of several slots), up to `most` tokens."""
    whole = most is not None
    on_cpu = model.device is None and not whole
    largest = min(most or (CPU_UBATCH if on_cpu else LARGEST), settings.n_ctx)
    ctx = new_context(
        model, ContextSettings(settings.n_ctx, largest, settings.n_threads, flash_attn=settings.flash_attn)
    )
    try:
        gaps = _NodeGaps() if on_cpu else None
        if gaps is not None:
            llama_cpp.llama_set_abort_callback(ctx, gaps.callback, None)
        tokens = _filler(model, largest)
        memory = llama_cpp.llama_get_memory(ctx)
        _evaluate(ctx, memory, tokens, smallest, gaps)  # warm-up: first-use allocations are not the chunk's
        measured: dict[int, float] = {}
        chosen = smallest
        started = time.perf_counter()
        size = smallest
        while size <= largest:
            ms = _evaluate(ctx, memory, tokens, size, gaps)
            if ms > budget_ms:
                ms = min(ms, _evaluate(ctx, memory, tokens, size, gaps))
            measured[size] = round(ms, 3)
            if ms > budget_ms:
                break
            chosen = size
            if time.perf_counter() - started > MEASURE_SEC:
                break
            size *= 2
        what = "steps" if whole else "graph nodes" if on_cpu else "chunks"
        return ChunkChoice(chosen, "auto", budget_ms, what, measured)
    finally:
        free_context(ctx)


class _NodeGaps:
    """An abort callback that never aborts: it notes the longest time between two of its
    calls, which is how long a cancel would wait on the CPU."""

    def __init__(self) -> None:
        self.last = 0.0
        self.longest = 0.0
        self.callback = llama_cpp.ggml_abort_callback(self._called)

    def start(self) -> None:
        self.last = time.perf_counter()
        self.longest = 0.0

    def _called(self, data: object) -> bool:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now
        return False

    def stop(self) -> float:
        self._called(None)  # the tail after the last node counts too
        return self.longest * 1000.0


def _filler(model: Model, n: int) -> ctypes.Array:
    """n ordinary tokens (a sentence, repeated): what a prompt costs does not depend on
    which tokens, but special ones might take other paths."""
    sentence = model.tokenize("The quick brown fox jumps over the lazy dog. ", add_special=False) or [0]
    return (llama_cpp.llama_token * n)(*(sentence * (n // len(sentence) + 1))[:n])


def _evaluate(ctx: int, memory: Any, tokens: ctypes.Array, n: int, gaps: _NodeGaps | None) -> float:
    """The longest a cancel would wait while `n` tokens are evaluated: the longest gap
    between stop points on the CPU, the whole evaluation on a GPU."""
    llama_cpp.llama_memory_clear(memory, True)
    if gaps is not None:
        gaps.start()
    t0 = time.perf_counter()
    rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, n))
    ms = gaps.stop() if gaps is not None else (time.perf_counter() - t0) * 1000.0
    if rc != 0:
        raise RuntimeError(f"llama_decode failed with status {rc} while sizing the prompt chunk")
    return ms
