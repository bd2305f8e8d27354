"""Scenario 6: what the cancel checks cost the worker's own generation path.

In this process, on the worker's engine pieces (model, per-job context, sampler
chain, `InferenceLoop._generate`, a cancel board word), three measurements:
- whole runs, two variants alternating on fresh contexts in ABBA order:
  `checked`, the engine's path as in production (the C abort callback on the
  run's cancel word, the word read before every token and prompt chunk), and
  `unchecked`, the same per-token work (sample, detokenize, assemble UTF-8,
  hand the token to the channel) with neither. End to end, but a run
  of a few seconds on a shared machine moves by a few per cent either way;
- the callback alone, decode by decode: one generation whose decodes alternate
  with and without it, so each pair of neighbouring tokens compares like with
  like (its cost inside llama_decode, free of drift);
- the loop's own check of the word, timed directly (one load per token).
The target is held to the sum of the last two; the first is the cross-check.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from bench.harness import prompts
from bench.harness.quiet import QuietGuard, take
from bench.harness.stats import summary
from worker_orcd.channel import native
from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.engine.contexts import ContextSettings, free_context, new_context
from worker_orcd.engine.loop import InferenceLoop, Run
from worker_orcd.engine.model import Model
from worker_orcd.engine.sampling import free_sampler, new_sampler
from worker_orcd.engine.text import Utf8Assembler
from worker_orcd.engine.threads import Threads
from worker_orcd.jobs.job import Sampling

_TOKEN_SIZE = ctypes.sizeof(llama_cpp.llama_token)
_TOKEN_P = ctypes.POINTER(llama_cpp.llama_token)


@dataclass(frozen=True)
class OverheadSettings:
    model: Path
    n_ctx: int
    n_threads: int
    prefill_chunk: int
    gpu_device: int | None
    tokens: int
    rounds: int
    extra_buffers: bool = True  # the worker's extra-CPU-buffers setting: the same kernels as it runs


class OverheadBench:
    """The worker's engine pieces loaded in this process, ready to generate in either variant."""

    def __init__(self, settings: OverheadSettings) -> None:
        self.settings = settings
        self.model = Model(settings.model, gpu_device=settings.gpu_device, extra_buffers=settings.extra_buffers)
        # At the bare loop's fixed thread count: the loop's own cost, not the threads' choice.
        threads = Threads.choose(settings.n_threads, fixed=True)
        self.loop = InferenceLoop(
            self.model, _NoSpares(), _DiscardChannel(), prefill_chunk=settings.prefill_chunk, threads=threads
        )
        self.ctx_settings = ContextSettings(settings.n_ctx, settings.prefill_chunk, settings.n_threads)
        self.board = CancelBoard(1)
        self.word_address = self.board.address(0)  # never raised here: a run that is not cancelled

    def close(self) -> None:
        self.model.close()

    def generate(self, variant: str, n: int) -> tuple[float, float]:
        """One generation on a fresh context: (loop ms per token, llama_decode ms per token)."""
        model = self.model
        run = self._run(n, variant)
        ctx = new_context(model, self.ctx_settings)
        sampler = new_sampler(run.sampling, model.n_vocab)
        try:
            if variant == "checked":
                llama_cpp.llama_set_abort_callback(ctx, self.loop._abort_callback, run.flag_address)
                word = ctypes.c_int.from_address(run.flag_address)
                facts = self.loop._generate(run, word, ctx, sampler)
                n_out, decode_ms = facts.tokens_out, facts.decode_ms
            elif variant == "unchecked":
                n_out, decode_ms = _generate_unchecked(model, self.loop, run, ctx, sampler)
            else:
                raise ValueError(f"unknown variant {variant!r}")
            perf = llama_cpp.llama_perf_context(ctx)
        finally:
            free_sampler(sampler)
            free_context(ctx)
        if n_out < 2 or perf.n_eval < 1:
            raise RuntimeError(f"generation stopped after {n_out} tokens")
        return decode_ms / n_out, perf.t_eval_ms / perf.n_eval


    def _run(self, n: int, tag: str) -> Run:
        native.library().orcd_cancel_flag_clear(self.word_address)
        return Run(
            number=n,
            job_id=f"overhead-{n}-{tag}",
            prompt_tokens=self.model.tokenize(prompts.story(n)),
            sampling=Sampling(
                max_tokens=self.settings.tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=0
            ),
            flag_address=self.word_address,
        )

    def toggled(self, n: int) -> list[tuple[float, float]]:
        """One generation whose decodes alternate: abort callback registered, then not.

        Neighbouring tokens cost the same, so each (with, without) pair of decodes
        measures the callback's cost inside llama_decode free of the drift that
        whole runs suffer. Returns (with, without) seconds per pair.
        """
        run = self._run(n, "toggled")
        ctx = new_context(self.model, self.ctx_settings)
        sampler = new_sampler(run.sampling, self.model.n_vocab)
        callback, no_callback = self.loop._abort_callback, llama_cpp.ggml_abort_callback()
        address = run.flag_address
        decode, clock = llama_cpp.llama_decode, time.perf_counter
        pairs: list[tuple[float, float]] = []
        try:
            _evaluate_prompt(run, ctx, self.loop.prefill_chunk)
            current = (llama_cpp.llama_token * 1)()
            batch = llama_cpp.llama_batch_get_one(current, 1)
            first_with = n % 2 == 0  # which of the two goes first alternates between runs
            times = {True: 0.0, False: 0.0}
            for i in range(2 * (self.settings.tokens // 2)):
                current[0] = llama_cpp.llama_sampler_sample(sampler, ctx, -1)
                with_cb = (i % 2 == 0) == first_with
                if with_cb:
                    llama_cpp.llama_set_abort_callback(ctx, callback, address)
                else:
                    llama_cpp.llama_set_abort_callback(ctx, no_callback, None)
                t0 = clock()
                if decode(ctx, batch) != 0:
                    raise RuntimeError("decode failed")
                times[with_cb] = clock() - t0
                if i % 2 == 1:
                    pairs.append((times[True], times[False]))
        finally:
            free_sampler(sampler)
            free_context(ctx)
        return pairs


def _flag_check_ns() -> float:
    """What the loop's own check costs per token: one load of the run's cancel word."""
    board = CancelBoard(1)
    word = ctypes.c_int.from_address(board.address(0))
    n = 200_000
    t0 = time.perf_counter_ns()
    for _ in range(n):
        if word.value:
            break
    loop_ns = time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    for _ in range(n):
        pass
    empty_ns = time.perf_counter_ns() - t0
    return max(0.0, (loop_ns - empty_ns) / n)


def measure(settings: OverheadSettings, guard: QuietGuard | None = None) -> dict[str, Any]:
    bench = OverheadBench(settings)
    wall: dict[str, list[float]] = {"checked": [], "unchecked": []}
    engine: dict[str, list[float]] = {"checked": [], "unchecked": []}
    toggled: list[tuple[float, float]] = []
    try:
        bench.generate("checked", 0)  # warm caches
        for r in range(settings.rounds):
            order = ("checked", "unchecked") if r % 2 == 0 else ("unchecked", "checked")

            def pair(r=r, order=order):  # both variants, same prompt: one paired sample
                return {variant: bench.generate(variant, r + 1) for variant in order}

            for variant, (ms, eval_ms) in take(guard, pair).items():
                wall[variant].append(ms)
                engine[variant].append(eval_ms)
            toggled += bench.toggled(r + 1)
    finally:
        bench.close()
    w = {k: summary(v) for k, v in wall.items()}
    e = {k: summary(v) for k, v in engine.items()}
    runs = _paired_pct(wall)
    callback_pct = summary(((a / b - 1.0) * 100.0 for a, b in toggled if b), 3)
    token_ms = w["checked"]["p50"] or 0.0
    flag_pct = _flag_check_ns() / (token_ms * 1e6) * 100.0 if token_ms else None
    return {
        "tokens_per_run": settings.tokens,
        "rounds": settings.rounds,
        "ms_per_token": w,
        "engine_ms_per_token": e,
        "tokens_per_s": {k: round(1000.0 / v["p50"], 2) for k, v in w.items() if v["p50"]},
        # Whole runs, checked vs unchecked, paired by round: end to end, but as noisy as the machine.
        "runs_overhead_pct": runs["p50"],
        "runs_overhead_pct_spread": runs,
        "runs_engine_overhead_pct": _paired_pct(engine)["p50"],
        # Decode by decode with the callback on and off: its cost inside llama_decode, drift-free.
        "callback_overhead_pct": callback_pct["p50"],
        "callback_pairs": callback_pct["n"],
        # The loop's own check of the flag, once per token.
        "flag_check_pct": None if flag_pct is None else round(flag_pct, 5),
        # What the target is held to: the callback and the flag check, each measured where it runs.
        "overhead_pct": None if flag_pct is None or callback_pct["p50"] is None
        else round(callback_pct["p50"] + flag_pct, 3),
    }


def _paired_pct(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Per round, (checked / unchecked − 1) × 100; summarised."""
    return summary(((c / u - 1.0) * 100.0 for c, u in zip(samples["checked"], samples["unchecked"]) if u), 3)


class _DiscardChannel:
    """The channel as `_generate` sees it: tokens go nowhere (the front is not measured here)."""

    def send_token(self, run: int, tokens_out: int, text: str) -> None:
        pass

    def send(self, message: dict) -> None:
        pass


class _NoSpares:
    """The context pool as `_generate` sees it; this benchmark makes its own contexts."""

    making = False

    def refill(self) -> None:
        pass


def _evaluate_prompt(run: Run, ctx: int, chunk: int) -> None:
    decode = llama_cpp.llama_decode
    batch_get_one = llama_cpp.llama_batch_get_one
    n_prompt = len(run.prompt_tokens)
    prompt = (llama_cpp.llama_token * n_prompt)(*run.prompt_tokens)
    base = ctypes.addressof(prompt)
    for start in range(0, n_prompt, chunk):
        n = min(chunk, n_prompt - start)
        if decode(ctx, batch_get_one(ctypes.cast(base + start * _TOKEN_SIZE, _TOKEN_P), n)) != 0:
            raise RuntimeError("prompt decode failed")


def _generate_unchecked(model: Model, loop: InferenceLoop, run: Run, ctx: int, sampler: int) -> tuple[int, float]:
    """`InferenceLoop._generate` for a run without stop strings, minus every cancel check."""
    decode = llama_cpp.llama_decode
    batch_get_one = llama_cpp.llama_batch_get_one
    _evaluate_prompt(run, ctx, loop.prefill_chunk)
    t1 = time.perf_counter()

    sample = llama_cpp.llama_sampler_sample
    piece = model.piece
    eog = model.eog_tokens
    utf8 = Utf8Assembler().feed
    send_token = loop.channel.send_token
    number = run.number
    max_tokens = run.sampling.max_tokens
    current = (llama_cpp.llama_token * 1)()
    next_batch = batch_get_one(current, 1)
    n_out = 0
    sent = 0
    while True:
        token = sample(sampler, ctx, -1)
        if token in eog:
            break
        n_out += 1
        text = utf8(piece(token))
        if text:
            send_token(number, n_out, text)
            sent += 1
            if sent == 1:
                loop.pool.refill()
        if n_out >= max_tokens:
            break
        current[0] = token
        if decode(ctx, next_batch) != 0:
            raise RuntimeError("decode failed")
    return n_out, (time.perf_counter() - t1) * 1000.0
