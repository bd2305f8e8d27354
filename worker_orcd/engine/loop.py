"""The inference thread of the engine process: the only place model code runs.

It takes one run at a time from the front and carries it to its facts:

    take a spare context → register the C abort callback on the run's cancel
    word → evaluate the prompt in chunks → sample/send/decode one token at a
    time → free the context → report what happened (`done`).

The cancel word (a slot of the shared cancel board, raised by the front) is
read before every prompt chunk and every token, and llama.cpp's CPU backend
reads it after every graph node through the abort callback; on CUDA the chunk
boundaries are the stop points inside a prompt. The context is freed before
`done` is sent, so the front says `CANCELLED` only once memory is back. The
engine reports facts; how the job ends is decided by the front (`jobs/outcomes`).
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import llama_cpp
from msgspec.structs import replace

from worker_orcd.channel import native
from worker_orcd.channel.frames import Channel
from worker_orcd.channel.messages import Done, RunFacts, Sampling, Started, Stopped, StopReason
from worker_orcd.engine.contexts import ContextPool, ContextUnavailable
from worker_orcd.engine.faults import FaultPlan, die
from worker_orcd.engine.model import Model
from worker_orcd.engine.sampling import free_sampler, new_sampler
from worker_orcd.engine.text import StopMatcher, Utf8Assembler
from worker_orcd.engine.threads import BATCH_TRIAL_MIN_CHUNKS, Threads
from worker_orcd.errors import ErrorCode
from worker_orcd.log import log_event

DECODE_ABORTED = 2  # llama_decode's return value when the abort callback fired
SHORT_PROMPT_TOKENS = 256  # a prompt this short is most of its job's time to first token
_TOKEN_SIZE = ctypes.sizeof(llama_cpp.llama_token)
_TOKEN_P = ctypes.POINTER(llama_cpp.llama_token)


@dataclass(frozen=True, slots=True)
class Run:
    """One job as the engine sees it: a number, tokens, sampling and a cancel word."""

    number: int
    job_id: str
    prompt_tokens: list[int]
    sampling: Sampling
    flag_address: int  # the run's word on the cancel board, in this process


class InferenceLoop:
    def __init__(
        self,
        model: Model,
        pool: ContextPool,
        channel: Channel,
        *,
        prefill_chunk: int,
        threads: Threads,
        faults: FaultPlan | None = None,
    ) -> None:
        self.model = model
        self.pool = pool
        self.channel = channel
        self.prefill_chunk = prefill_chunk
        self.threads = threads
        self.faults = faults or FaultPlan()
        self._runs: queue.SimpleQueue[Run | None] = queue.SimpleQueue()
        self._abort_callback = llama_cpp.ggml_abort_callback(native.abort_callback_address())
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, run: Run) -> None:
        self._runs.put(run)

    def close(self, timeout: float | None = None) -> bool:
        """No more runs: the one in progress finishes first. True once the thread has ended."""
        self._runs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            run = self._runs.get()
            if run is None:
                return
            try:
                facts = self._run(run)
            except Exception as exc:  # a bug or an engine fault: report it, keep the engine
                log_event("job_internal_error", job_id=run.job_id, error=repr(exc))
                facts = RunFacts(error_code=ErrorCode.INTERNAL, error_message=f"inference failed: {exc}")
            self.channel.send(done(run, facts, self.threads))
            self.pool.refill()  # after the run: one that ended early still leaves a spare

    def _run(self, run: Run) -> RunFacts:
        word = ctypes.c_int.from_address(run.flag_address)  # `.value` is one load of the word
        if self.faults.context_fails(run.job_id):
            self._started(run)
            return RunFacts(error_code=self._oom_code(), error_message="injected fault: the context could not be made")
        try:
            ctx = self.pool.take(lambda: word.value != 0, refill=self._spare_during_prompt(run))
        except ContextUnavailable as exc:
            self._started(run)  # the job did start: its stream opens with `started`
            return RunFacts(error_code=self._oom_code(), error_message=str(exc))
        self._started(run)
        if ctx is None:  # cancelled while its context was still being made: nothing to free
            return self._stopped(run, RunFacts())
        sampler = 0
        try:
            llama_cpp.llama_set_abort_callback(ctx, self._abort_callback, run.flag_address)
            sampler = new_sampler(run.sampling, self.model.n_vocab)
            facts = self._generate(run, word, ctx, sampler)
        except Exception as exc:
            log_event("job_internal_error", job_id=run.job_id, error=repr(exc))
            facts = RunFacts(error_code=ErrorCode.INTERNAL, error_message=f"inference failed: {exc}")
        finally:
            if sampler:
                free_sampler(sampler)
            self.pool.release(ctx)  # before `done`, always
        return facts

    def _started(self, run: Run) -> None:
        self.channel.send(Started(run.number))

    def _stopped(self, run: Run, facts: RunFacts) -> RunFacts:
        return stopped(self.channel, self.faults, run, facts)

    def _spare_during_prompt(self, run: Run) -> bool:
        """Whether the next spare context may be made while this run's prompt is evaluated.

        On the CPU, making a context takes a core from the prompt's evaluation,
        and for a short prompt that is the job's whole time to first token: its
        spare is made after the first token instead. A longer prompt absorbs it,
        and a prompt evaluated on a GPU does not need the CPU.
        """
        return self.model.info.backend != "cpu" or len(run.prompt_tokens) > SHORT_PROMPT_TOKENS

    # -- generation: the hot path ----------------------------------------------------------

    def _generate(self, run: Run, word: Any, ctx: int, sampler: int) -> RunFacts:
        decode = self.faults.decode_for(run.job_id, llama_cpp.llama_decode)
        batch_get_one = llama_cpp.llama_batch_get_one
        clock = time.perf_counter
        set_threads = llama_cpp.llama_set_n_threads
        per_token, per_chunk = self.threads.decode, self.threads.batch
        pool = self.pool
        n_token, n_chunk = per_token.current, per_chunk.current
        set_threads(ctx, n_token, n_chunk)

        t0 = clock()
        n_prompt = len(run.prompt_tokens)
        prompt = (llama_cpp.llama_token * n_prompt)(*run.prompt_tokens)
        base = ctypes.addressof(prompt)
        # A short prompt's chunk is its job's first token: no trial of fewer threads on it.
        try_fewer = n_prompt >= BATCH_TRIAL_MIN_CHUNKS * self.prefill_chunk
        for start in range(0, n_prompt, self.prefill_chunk):
            if word.value:
                return self._stopped(run, RunFacts())
            n = min(self.prefill_chunk, n_prompt - start)
            making = pool.making
            began = clock()
            rc = decode(ctx, batch_get_one(ctypes.cast(base + start * _TOKEN_SIZE, _TOKEN_P), n))
            if rc != 0:
                return self._decode_failed(run, rc, RunFacts())
            # A step that shared the cores with the spare's making says nothing of its count.
            if not (making or pool.making) and per_chunk.observe((clock() - began) / n, try_fewer) != n_chunk:
                n_chunk = per_chunk.current
                set_threads(ctx, n_token, n_chunk)
        t1 = clock()

        sample = llama_cpp.llama_sampler_sample
        observe = per_token.observe
        piece = self.model.piece
        eog = self.model.eog_tokens
        utf8 = Utf8Assembler().feed
        stops = StopMatcher(run.sampling.stop) if run.sampling.stop else None
        send_token = self.channel.send_token
        number = run.number
        max_tokens = run.sampling.max_tokens
        min_tokens = run.sampling.min_tokens
        ban_eog = self.model.ban_eog
        fault_at, fault = self.faults.token_fault(run.job_id, self.channel)
        current = (llama_cpp.llama_token * 1)()
        next_batch = batch_get_one(current, 1)
        n_out = 0
        sent = 0
        while True:
            if word.value:
                return self._stopped(run, RunFacts(tokens_out=n_out, prompt_ms=ms(t0, t1)))
            if n_out < min_tokens:
                ban_eog(ctx)
            token = sample(sampler, ctx, -1)
            if token in eog:
                reason = StopReason.EOS
                break
            n_out += 1
            text = utf8(piece(token))
            if stops is not None:
                text = stops.feed(text)
            if text:
                send_token(number, n_out, text)
                sent += 1
                if sent == 1:  # the first token is out: the next spare may take a core now
                    self.pool.refill()
            if stops is not None and stops.stopped:
                reason = StopReason.STOP
                break
            if n_out >= max_tokens:
                reason = StopReason.MAX_TOKENS
                break
            if n_out == fault_at:  # tests only: stuck in C deaf to the word, or dead as on a CUDA error
                fault()
            current[0] = token
            making = pool.making
            began = clock()
            rc = decode(ctx, next_batch)
            if rc != 0:
                return self._decode_failed(run, rc, RunFacts(tokens_out=n_out, prompt_ms=ms(t0, t1)))
            if not (making or pool.making) and observe(clock() - began) != n_token:
                n_token = per_token.current
                set_threads(ctx, n_token, n_chunk)
        if stops is not None and reason is not StopReason.STOP:
            tail = stops.flush()
            if tail:
                send_token(number, n_out, tail)
        return RunFacts(stop_reason=reason, tokens_out=n_out, prompt_ms=ms(t0, t1), decode_ms=ms(t1, clock()))

    def _decode_failed(self, run: Run, rc: int, facts: RunFacts) -> RunFacts:
        # Only the run's own abort callback makes llama_decode return "aborted",
        # and it fires only once the front has raised the word: a cancel, never
        # an engine failure.
        if rc == DECODE_ABORTED:
            return self._stopped(run, facts)
        return replace(facts, error_code=decode_error_code(self.model, rc), error_message=decode_error_message(rc))

    def _oom_code(self) -> ErrorCode:
        return oom_code(self.model)


# -- how a run ends, the same in both loops (this one and engine.slots) ---------------------


def stopped(channel: Channel, faults: FaultPlan, run: Run, facts: RunFacts) -> RunFacts:
    """The loop saw the raised word: say so at once (the front's deadline watches for it)."""
    at = time.perf_counter()
    channel.send(Stopped(run.number, at))
    if faults.dies_on_cancel(run.job_id):  # tests only: a crash before the memory is freed
        die()
    return replace(facts, stopped_at=at)


def done(run: Run, facts: RunFacts, threads: Threads, kv_cells: int | None = None) -> Done:
    """A run's `done`, once its memory is back: stamped now, its times rounded."""
    freed = replace(
        facts,
        freed_at=time.perf_counter(),
        prompt_ms=round(facts.prompt_ms, 3),
        decode_ms=round(facts.decode_ms, 3),
    )
    return Done(run.number, freed, threads.health(), kv_cells)


def decode_error_code(model: Model, rc: int) -> ErrorCode:
    """A failed llama_decode (not an abort): on CUDA a negative status is the device's."""
    return ErrorCode.CUDA_ERROR if model.info.backend == "cuda" and rc < 0 else ErrorCode.INTERNAL


def decode_error_message(rc: int) -> str:
    return f"llama_decode failed with status {rc}"


def oom_code(model: Model) -> ErrorCode:
    return ErrorCode.VRAM_OOM if model.info.backend == "cuda" else ErrorCode.INTERNAL


def ms(start: float, end: float) -> float:
    return (end - start) * 1000.0
