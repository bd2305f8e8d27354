"""Many runs at once in one context: the engine's path for `--parallel N` (N > 1).

One context holds N sequences, one per slot, in a unified KV cache of N × n_ctx
cells: each run may use the configured n_ctx (prompt + max_tokens must fit in
it), and together they never need more than the cache holds. Each step is one
`llama_decode` of one batch: the next token of every decoding run, then prompt
chunks of the runs still evaluating their prompt, shared equally among them, up
to `step_tokens` (the largest step whose decode took at most the stop budget at
start); a run alone takes whole prefill chunks, which give way to a run that
arrives meanwhile. Logits are asked for only where a token is sampled: a
decoding run's token, the last token of a prompt. Each run samples from its own
index in the batch with its own sampler chain, and keeps its own StopMatcher
and Utf8Assembler.

Cancel: each run's word is read before every step; a raised one leaves the
batch, its cells are removed from the cache and checked gone, then `stopped`
and `done` are sent. Inside a decode the C abort callback reads the words of
every run in that batch and aborts the graph only once all are raised: one
graph computes them all, and one run's cancel must not stop another's tokens.
A decode that comes back aborted therefore means every run in it was
cancelled, or a lone run's chunk gave way (it goes on from the chunk's start;
that stop ends no run). Every run ends by the same release (cells removed and checked),
whatever its end, and gets exactly one `done`, after its cells are gone.

The messages per run are the one-job path's (`engine.loop`): `started` when it
takes a slot, token frames, `stopped` when the loop sees the raised word, `done`
with its facts.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections import deque
from typing import Any

import llama_cpp
from msgspec.structs import replace

from worker_orcd.channel import native
from worker_orcd.channel.frames import Channel
from worker_orcd.channel.messages import RunFacts, Started, StopReason
from worker_orcd.engine.contexts import ContextSettings, free_context, new_context
from worker_orcd.engine.faults import Decode, FaultPlan
from worker_orcd.engine.loop import (
    DECODE_ABORTED,
    Run,
    decode_error_code,
    decode_error_message,
    done,
    ms,
    oom_code,
    stopped,
)
from worker_orcd.engine.model import Model
from worker_orcd.engine.sampling import free_sampler, new_sampler
from worker_orcd.engine.text import StopMatcher, Utf8Assembler
from worker_orcd.engine.threads import BATCH_TRIAL_MIN_CHUNKS, Threads
from worker_orcd.errors import ErrorCode
from worker_orcd.log import log_event

_TOKEN = ctypes.sizeof(llama_cpp.llama_token)
_POS = ctypes.sizeof(llama_cpp.llama_pos)
_SEQ_P = ctypes.POINTER(llama_cpp.llama_seq_id)
_PTR = ctypes.sizeof(_SEQ_P)


def _decodes(ctx: int, batch: object) -> int:
    """What a run without a decode fault adds to a step: nothing (see `_Job.fail`)."""
    return 0


def _prompt_left(job: _Job) -> int:
    return job.n_prompt - job.done


def _shares(budget: int, left: list[int]) -> list[int]:
    """A step's `budget` of prompt tokens shared equally by the starting runs, each with
    `left` tokens to go: one that needs less than its share takes what it needs and the rest
    goes to the others. What does not divide equally goes to those with the most left (ties:
    the oldest, as listed), so over the steps it goes round and none pulls ahead. Runs
    that start together so reach their first tokens together (none decodes beside the
    others' prompts, ahead of them), and a short prompt beside a long one is not held for
    all of it."""
    shares = [0] * len(left)
    waiting = len(left)
    # The fewest left first (ties: the newest), each its floor of an equal share: the
    # remainder is left to those served last.
    for i in sorted(range(len(left)), key=lambda i: (left[i], -i)):
        share = min(left[i], budget // waiting)
        shares[i] = share
        budget -= share
        waiting -= 1
    return shares


class _Job:
    """A run in a slot: its sequence, sampler, text state and where its prompt is."""

    __slots__ = (
        "cells",
        "done",
        "ended",
        "fail",
        "fault",
        "fault_at",
        "gave_way",
        "n_out",
        "n_past",
        "n_prompt",
        "prompt",
        "prompt_addr",
        "run",
        "sample_at",
        "sampler",
        "seq",
        "seq_ptr",
        "seq_row",
        "stops",
        "t0",
        "t1",
        "token",
        "utf8",
        "word",
    )

    def __init__(self, run: Run, seq: int) -> None:
        self.run = run
        self.seq = seq
        self.word = ctypes.c_int.from_address(run.flag_address)  # `.value` is one load of the word
        self.n_prompt = len(run.prompt_tokens)
        self.prompt = (llama_cpp.llama_token * self.n_prompt)(*run.prompt_tokens)
        self.prompt_addr = ctypes.addressof(self.prompt)
        self.done = 0  # prompt tokens in the cache
        self.n_past = 0  # the sequence's cells: the next token's position
        self.sample_at = -1  # the batch index of its logits in the last decode
        self.cells: ctypes.c_int64 | None = None  # its count of cells on the board, if the board has one
        self.token = 0  # the sampled token the next step decodes
        self.n_out = 0
        self.sampler = 0
        self.utf8 = Utf8Assembler().feed
        self.stops = StopMatcher(run.sampling.stop) if run.sampling.stop else None
        self.fail: Decode = _decodes
        self.fault_at = 0
        self.fault: Any = None
        self.seq_ptr: Any = None
        self.seq_row = 0
        self.t0 = time.perf_counter()
        self.t1 = 0.0
        self.ended = False
        self.gave_way = False  # a chunk of it gave way, and no step has had it since

    @property
    def prompting(self) -> bool:
        return self.done < self.n_prompt


class BatchLoop:
    """The inference thread for N slots: `start`, `submit(Run)`, `close(timeout)`, as InferenceLoop."""

    def __init__(
        self,
        model: Model,
        channel: Channel,
        settings: ContextSettings,
        *,
        parallel: int,
        prefill_chunk: int,
        threads: Threads,
        step_tokens: int | None = None,
        step_measured_ms: dict[str, float] | None = None,
        cells_offset: int = 0,
        faults: FaultPlan | None = None,
    ) -> None:
        """`settings.n_ctx` is one run's context; the loop's context holds `parallel` of them.
        `prefill_chunk`: the prompt tokens of a step that holds one run alone (a cancel stops
        it mid-graph); `step_tokens` (default: the chunk): the most tokens of a step that holds
        several, which a cancel of one of them waits for (`step_measured_ms`: what sized it, for
        /health). `cells_offset`: where, past a run's
        word, the board keeps the count of its cells (0: the board has none)."""
        if parallel < 1:
            raise ValueError(f"parallel: expected at least 1, got {parallel}")
        self.model = model
        self.channel = channel
        self.parallel = parallel
        self.n_ctx = settings.n_ctx
        self.prefill_chunk = prefill_chunk
        self.cells_offset = cells_offset
        self.step_tokens = min(step_tokens or prefill_chunk, prefill_chunk)
        self.step_measured_ms = step_measured_ms
        # A step's prompt tokens are at least its decoding runs' tokens (see _step).
        self.capacity = max(prefill_chunk, 2 * parallel)
        self.threads = threads
        self.faults = faults or FaultPlan()
        self._runs: queue.SimpleQueue[Run | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)

        t0 = time.perf_counter()
        shared = ContextSettings(
            settings.n_ctx * parallel, self.capacity, settings.n_threads, settings.offload_kqv, settings.flash_attn
        )
        self.ctx = new_context(model, shared, n_seq=parallel)
        self.make_ms = round((time.perf_counter() - t0) * 1000.0, 3)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._n_threads = (threads.decode.current, threads.batch.current)
        llama_cpp.llama_set_n_threads(self.ctx, *self._n_threads)
        self._words = native.BatchWords(parallel)
        self._abort_callback = llama_cpp.ggml_abort_callback(native.abort_all_callback_address())
        llama_cpp.llama_set_abort_callback(self.ctx, self._abort_callback, self._words.address)

        # The batch's arrays are the loop's own: a prompt chunk is copied in whole
        # (tokens, positions, sequence pointers) rather than token by token.
        cap = self.capacity
        self._tokens = (llama_cpp.llama_token * cap)()
        self._pos = (llama_cpp.llama_pos * cap)()
        self._n_seq_id = (ctypes.c_int32 * cap)(*([1] * cap))
        self._seq_id = (_SEQ_P * cap)()
        self._logits = (ctypes.c_int8 * cap)()
        self._seq_ids = (llama_cpp.llama_seq_id * parallel)(*range(parallel))
        # Row s: `cap` pointers to sequence id s, the seq_id entries of a chunk of slot s.
        base = ctypes.addressof(self._seq_ids)
        self._seq_rows = [
            (_SEQ_P * cap)(*([ctypes.cast(base + s * ctypes.sizeof(llama_cpp.llama_seq_id), _SEQ_P)] * cap))
            for s in range(parallel)
        ]
        self._positions = (llama_cpp.llama_pos * self.n_ctx)(*range(self.n_ctx))
        batch: Any = llama_cpp.llama_batch()
        batch.token = ctypes.cast(self._tokens, ctypes.POINTER(llama_cpp.llama_token))
        batch.embd = None
        batch.pos = ctypes.cast(self._pos, ctypes.POINTER(llama_cpp.llama_pos))
        batch.n_seq_id = ctypes.cast(self._n_seq_id, ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = ctypes.cast(self._seq_id, ctypes.POINTER(_SEQ_P))
        batch.logits = ctypes.cast(self._logits, ctypes.POINTER(ctypes.c_int8))
        self._batch = batch

        self._free = deque(range(parallel))  # sequences whose cells are gone
        self._active: list[_Job] = []
        self._waiting: deque[Run] = deque()
        self._faulty = 0  # active runs with an injected decode fault
        self._kv_cells = 0
        self._closed = False

    # -- the interface -----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, run: Run) -> None:
        self._runs.put(run)
        self._words.arrive()  # after the put: the loop may take it first, never count it twice

    def close(self, timeout: float | None = None) -> bool:
        """No more runs: those submitted finish first. True once the thread has ended and
        the context is freed."""
        self._runs.put(None)
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        if not self._closed:
            self._closed = True
            free_context(self.ctx)
        return True

    def health(self) -> dict[str, Any]:
        """The slots as the loop last left them (a snapshot; safe from any thread)."""
        busy = len(self._active)
        return {
            "parallel": self.parallel,
            "busy": busy,
            "free": self.parallel - busy,
            "waiting": len(self._waiting),
            "kv_cells": self._kv_cells,
            "kv_cells_total": self.n_ctx * self.parallel,
            "kv_unified": True,
            "step_tokens": self.step_tokens,
            "step_measured_ms": self.step_measured_ms,
        }

    def kv_cells(self) -> int:
        """Cells in use, as llama.cpp counts them (sum over sequences of pos_max + 1). Only
        between steps: from the loop's thread, or once it waits with nothing to run."""
        pos_max = llama_cpp.llama_memory_seq_pos_max
        return sum(pos_max(self.memory, s) + 1 for s in range(self.parallel))

    # -- the thread ----------------------------------------------------------------------

    def _serve(self) -> None:
        closing = False
        active = self._active
        waiting = self._waiting
        while True:
            if not active and not waiting:
                if closing:
                    return
                item = self._runs.get()
                if item is None:
                    closing = True
                    continue
                waiting.append(item)
                self._words.take()
            while True:  # whatever else has come meanwhile, without waiting
                try:
                    item = self._runs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                else:
                    waiting.append(item)
                    self._words.take()
            try:
                self._admit()
                self._step()
            except Exception as exc:  # a bug or an engine fault: every run in hand ends, the engine stays
                log_event("batch_internal_error", error=repr(exc), runs=[j.run.job_id for j in active])
                for job in list(active):
                    self._end(job, RunFacts(error_code=ErrorCode.INTERNAL, error_message=f"inference failed: {exc}"))

    def _admit(self) -> None:
        """Waiting runs into free slots, in order; a cancelled waiting run ends where it is."""
        waiting = self._waiting
        for run in [r for r in waiting if ctypes.c_int.from_address(r.flag_address).value]:
            waiting.remove(run)  # cancelled before it had a slot: nothing to free
            self.channel.send(Started(run.number))
            facts = self._stopped(run, RunFacts())
            self._send_done(run, facts)
        while waiting and self._free:
            run = waiting.popleft()
            self.channel.send(Started(run.number))
            refused = self._refused(run)
            if refused is not None:
                self._send_done(run, refused)
                continue
            seq = self._free.popleft()
            try:
                job = self._job(run, seq)
            except Exception as exc:  # nothing is in its cells yet: the slot is free again
                self._free.appendleft(seq)
                log_event("job_internal_error", job_id=run.job_id, error=repr(exc))
                self._send_done(run, RunFacts(error_code=ErrorCode.INTERNAL, error_message=f"inference failed: {exc}"))
                continue
            self._faulty += job.fail is not _decodes
            self._active.append(job)
        if waiting and not self._free and not self._active:  # every slot's cells were left: none will free
            while waiting:
                run = waiting.popleft()
                self.channel.send(Started(run.number))
                self._send_done(
                    run, RunFacts(error_code=ErrorCode.INTERNAL, error_message="no slot of the engine is usable")
                )

    def _job(self, run: Run, seq: int) -> _Job:
        job = _Job(run, seq)
        job.seq_row = ctypes.addressof(self._seq_rows[seq])
        job.seq_ptr = self._seq_rows[seq][0]
        job.fail = self.faults.decode_for(run.job_id, _decodes)
        job.fault_at, job.fault = self.faults.token_fault(run.job_id, self.channel)
        job.sampler = new_sampler(run.sampling, self.model.n_vocab)
        if self.cells_offset:
            job.cells = ctypes.c_int64.from_address(run.flag_address + self.cells_offset)
            job.cells.value = 0
        return job

    def _refused(self, run: Run) -> RunFacts | None:
        """Why a run cannot take a slot, or None if it can."""
        if self.faults.context_fails(run.job_id):
            return RunFacts(error_code=self._oom_code(), error_message="injected fault: the context could not be made")
        n = len(run.prompt_tokens)
        if n == 0:
            return RunFacts(error_code=ErrorCode.INTERNAL, error_message="the prompt has no tokens")
        # A token llama.cpp would refuse fails the whole batch's decode, not this run alone.
        if min(run.prompt_tokens) < 0 or max(run.prompt_tokens) >= self.model.n_vocab:
            return RunFacts(
                error_code=ErrorCode.INTERNAL, error_message="the prompt holds a token the model does not have"
            )
        if n + run.sampling.max_tokens > self.n_ctx:
            return RunFacts(
                error_code=ErrorCode.INTERNAL,
                error_message=f"the prompt ({n} tokens) and max_tokens ({run.sampling.max_tokens}) "
                f"do not fit in the context of {self.n_ctx} tokens per job",
            )
        return None

    # -- one step: the hot path ------------------------------------------------------------

    def _step(self) -> None:
        active = self._active
        # Before the step: each run's word, then each decoding run's next token.
        for job in list(active):
            if job.word.value:
                self._end(job, self._stopped(job.run, self._facts(job, stopped=True)))
            elif job.sample_at >= 0:
                self._sample(job)
        if not active:
            return

        tokens, pos, seq_id, logits = self._tokens, self._pos, self._seq_id, self._logits
        in_batch: list[_Job] = []
        words: list[int] = []
        n = 0
        for job in active:
            if not job.prompting:
                tokens[n] = job.token
                pos[n] = job.n_past
                seq_id[n] = job.seq_ptr
                logits[n] = 1
                job.sample_at = n
                job.n_past += 1
                n += 1
                in_batch.append(job)
                words.append(job.run.flag_address)
        decoding = n
        # Alone, a run's prompt goes in whole chunks: its own cancel aborts the graph, and so
        # does a run that arrives meanwhile (the chunk gives way, see _give_way). Beside
        # others, a step holds `step_tokens` (a cancel waits for the step), but never fewer
        # prompt tokens than decoding runs' tokens: a starting run takes at least half a step
        # and is never starved; a step is then at most twice a decode-only one.
        lone = len(active) == 1
        budget = self.prefill_chunk if lone else max(self.step_tokens - n, n, 1)
        prompt_left = 0
        starting = [job for job in active if job.prompting]
        for job, k in zip(starting, _shares(budget, [_prompt_left(job) for job in starting]), strict=True):
            if k == 0:
                continue
            at = job.done
            ctypes.memmove(ctypes.addressof(tokens) + n * _TOKEN, job.prompt_addr + at * _TOKEN, k * _TOKEN)
            ctypes.memmove(ctypes.addressof(pos) + n * _POS, ctypes.addressof(self._positions) + at * _POS, k * _POS)
            ctypes.memmove(ctypes.addressof(seq_id) + n * _PTR, job.seq_row, k * _PTR)
            ctypes.memset(ctypes.addressof(logits) + n, 0, k)
            job.done = job.n_past = at + k
            prompt_left += job.n_prompt - job.done
            n += k
            if job.prompting:
                job.sample_at = -1
            else:  # the prompt's last token: the run's first token is sampled from it
                logits[n - 1] = 1
                job.sample_at = n - 1
            in_batch.append(job)
            words.append(job.run.flag_address)

        # A run's lone chunk gives way again only once a step has had it: runs that arrive
        # and at once end (cancelled, refused) cannot hold a long prompt back for ever.
        gives_way = lone and n > self.step_tokens and not active[0].gave_way
        self._words.set(words, gives_way=gives_way)
        self._batch.n_tokens = n
        rc = 0
        if self._faulty:  # tests only: a run's injected failure fails its step
            for job in in_batch:
                rc = rc or job.fail(self.ctx, self._batch)
        began = time.perf_counter()
        if rc == 0:
            rc = llama_cpp.llama_decode(self.ctx, self._batch)
        self._words.set([])
        if rc == DECODE_ABORTED and gives_way and not active[0].word.value:
            self._give_way(active[0], n)
        elif rc != 0:
            self._decode_failed(in_batch, rc)
        else:
            now = time.perf_counter()
            for job in in_batch:
                job.gave_way = False
                if job.t1 == 0.0 and not job.prompting:
                    job.t1 = now
            self._observe(now - began, n, n - decoding, prompt_left)
        self._count_cells()

    def _give_way(self, job: _Job, n: int) -> None:
        """A lone run's chunk of `n` prompt tokens stopped for a run that arrived: its cells
        are removed (llama.cpp removes those of the stopped graph; a larger chunk's earlier
        graphs are evaluated again too) and its prompt goes on from where the chunk began."""
        at = job.done - n
        llama_cpp.llama_memory_seq_rm(self.memory, job.seq, at, -1)
        left = llama_cpp.llama_memory_seq_pos_max(self.memory, job.seq)
        if left != at - 1:
            raise RuntimeError(f"a chunk that gave way left cells: position {left}, expected {at - 1}")
        job.done = job.n_past = at
        job.sample_at = -1
        job.gave_way = True

    def _observe(self, seconds: float, n: int, prompt: int, prompt_left: int) -> None:
        """A step's time for the thread counts: llama.cpp computes a one-token step with
        `n_threads` and any other with `n_threads_batch`. Only steps like those each governor
        knows from the one-job path are samples: a lone token, or mostly a prompt chunk (per
        token); a few decoding runs' tokens alone cost per token what neither does."""
        threads = self.threads
        if n == 1:
            changed = threads.decode.observe(seconds) != self._n_threads[0]
        elif 2 * prompt >= n:
            # A prompt with few chunks left is a job's first token: no trial of fewer threads on it.
            try_fewer = prompt_left >= BATCH_TRIAL_MIN_CHUNKS * self.prefill_chunk
            changed = threads.batch.observe(seconds / n, try_fewer) != self._n_threads[1]
        else:
            return
        if changed:
            self._n_threads = (threads.decode.current, threads.batch.current)
            llama_cpp.llama_set_n_threads(self.ctx, *self._n_threads)

    def _count_cells(self) -> None:
        """Each run's cells, published on the board for /health, and their sum."""
        pos_max = llama_cpp.llama_memory_seq_pos_max
        memory = self.memory
        total = 0
        for job in self._active:
            n = pos_max(memory, job.seq) + 1
            if job.cells is not None:
                job.cells.value = n
            total += n
        self._kv_cells = total

    def _sample(self, job: _Job) -> None:
        if job.n_out < job.run.sampling.min_tokens:
            self.model.ban_eog(self.ctx, job.sample_at)
        token = llama_cpp.llama_sampler_sample(job.sampler, self.ctx, job.sample_at)
        job.sample_at = -1
        if token in self.model.eog_tokens:
            return self._finish(job, StopReason.EOS)
        job.n_out += 1
        text = job.utf8(self.model.piece(token))
        stops = job.stops
        if stops is not None:
            text = stops.feed(text)
        if text:
            self.channel.send_token(job.run.number, job.n_out, text)
        if stops is not None and stops.stopped:
            return self._finish(job, StopReason.STOP)
        if job.n_out >= job.run.sampling.max_tokens:
            return self._finish(job, StopReason.MAX_TOKENS)
        if job.n_out == job.fault_at:  # tests only: stuck in C, dead as on a CUDA error, a bad frame
            job.fault()
        job.token = token
        return None

    def _finish(self, job: _Job, reason: StopReason) -> None:
        if job.stops is not None and reason is not StopReason.STOP:
            tail = job.stops.flush()
            if tail:
                self.channel.send_token(job.run.number, job.n_out, tail)
        self._end(job, replace(self._facts(job), stop_reason=reason))

    def _decode_failed(self, in_batch: list[_Job], rc: int) -> None:
        """Every run of the batch ends: the graph computed them all."""
        if rc == DECODE_ABORTED:  # only when every word in it was raised: all cancelled
            for job in in_batch:
                self._end(job, self._stopped(job.run, self._facts(job, stopped=True)))
            return
        code = decode_error_code(self.model, rc)
        log_event("batch_decode_failed", status=rc, runs=[j.run.job_id for j in in_batch])
        for job in in_batch:
            self._end(
                job,
                replace(self._facts(job), error_code=code, error_message=decode_error_message(rc)),
            )

    # -- ends ------------------------------------------------------------------------------

    def _facts(self, job: _Job, *, stopped: bool = False) -> RunFacts:
        if job.t1 == 0.0:  # still in its prompt
            return RunFacts(tokens_out=job.n_out)
        if stopped:
            return RunFacts(tokens_out=job.n_out, prompt_ms=ms(job.t0, job.t1))
        return RunFacts(tokens_out=job.n_out, prompt_ms=ms(job.t0, job.t1), decode_ms=ms(job.t1, time.perf_counter()))

    def _stopped(self, run: Run, facts: RunFacts) -> RunFacts:
        return stopped(self.channel, self.faults, run, facts)

    def _end(self, job: _Job, facts: RunFacts) -> None:
        """The one release of every run: out of the slots, its cells removed and checked gone,
        its sampler freed; then `done`."""
        if job.ended:
            return
        job.ended = True
        self._active.remove(job)
        self._faulty -= job.fail is not _decodes
        try:
            llama_cpp.llama_memory_seq_rm(self.memory, job.seq, -1, -1)
            left = llama_cpp.llama_memory_seq_pos_max(self.memory, job.seq)
            if job.cells is not None:
                job.cells.value = left + 1  # 0 when they are gone, before `done`
            if left == -1:
                self._free.append(job.seq)
            else:  # the slot is not used again: its cells might be read by the next run
                log_event("batch_cells_left", job_id=job.run.job_id, seq=job.seq, pos_max=left)
                if facts.error_code is None:
                    facts = replace(
                        facts,
                        error_code=ErrorCode.INTERNAL,
                        error_message=f"the run's cells could not be freed (position {left} left)",
                    )
            self._count_cells()
        finally:
            if job.sampler:
                free_sampler(job.sampler)
                job.sampler = 0
            self._send_done(job.run, facts)

    def _send_done(self, run: Run, facts: RunFacts) -> None:
        self.channel.send(done(run, facts, self.threads, self._kv_cells))

    def _oom_code(self) -> ErrorCode:
        return oom_code(self.model)
