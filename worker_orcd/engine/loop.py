"""The inference thread: the only place model code runs.

It takes jobs from the queue one at a time and carries each to its single
terminal event:

    take a spare context → register the C abort callback on the job's flag →
    evaluate the prompt in chunks → sample/emit/decode one token at a time →
    free the context → emit `end` or `error`.

The cancel flag is checked before every prompt chunk and every token, and
llama.cpp's CPU backend checks it after every graph node through the abort
callback; on CUDA the chunk boundaries are the stop points inside a prompt.
Memory is released before the terminal event, so a client that has seen
`CANCELLED` knows the worker is back at its idle footprint.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass

import llama_cpp

from worker_orcd import native
from worker_orcd.engine.contexts import ContextPool, ContextUnavailable
from worker_orcd.engine.faults import FaultPlan
from worker_orcd.engine import priority
from worker_orcd.engine.model import Model
from worker_orcd.engine.sampling import free_sampler, new_sampler
from worker_orcd.engine.text import StopMatcher, Utf8Assembler
from worker_orcd.engine.watchdog import Watchdog
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events
from worker_orcd.jobs.cancel_flag import CancelFlag, CancelReason
from worker_orcd.jobs.events import Event
from worker_orcd.jobs.job import Job, JobState, Outcome, Phase, cancel_error, elapsed_ms
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.log import log_event

DECODE_ABORTED = 2  # llama_decode's return value when the abort callback fired
_TOKEN_SIZE = ctypes.sizeof(llama_cpp.llama_token)
_TOKEN_P = ctypes.POINTER(llama_cpp.llama_token)


@dataclass(slots=True)
class _Result:
    """How generation stopped, before memory is released."""

    stop_reason: str | None = None  # eos | max_tokens | stop
    stopped_at: float | None = None  # perf_counter() when a raised flag was seen
    error_code: ErrorCode | None = None
    error_message: str = ""
    prompt_ms: float = 0.0
    decode_ms: float = 0.0


class InferenceLoop:
    def __init__(
        self,
        model: Model,
        pool: ContextPool,
        queue: JobQueue,
        *,
        prefill_chunk: int,
        timeout_sec: float,
        faults: FaultPlan | None = None,
    ) -> None:
        self.model = model
        self.faults = faults or FaultPlan()
        self.pool = pool
        self.queue = queue
        self.prefill_chunk = prefill_chunk
        self.active: Job | None = None
        self._watchdog = Watchdog(timeout_sec)
        self._abort_callback = llama_cpp.ggml_abort_callback(native.abort_callback_address())
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        self._watchdog.close()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        priority.lower_this_thread()  # before the first graph: its OpenMP workers inherit it
        while True:
            job = self.queue.take()
            if job is None:
                return
            self.active = job
            try:
                if job.start():  # False: cancelled while it waited; its stream has its event
                    self._run_job(job)
            except Exception as exc:  # never lose the thread, never leave a job without its end
                self._fail_unexpectedly(job, exc)
            finally:
                self.active = None
                self.pool.refill()  # after the terminal event: a job that ended early still leaves a spare

    def _run_job(self, job: Job) -> None:
        self._watchdog.arm(job)
        try:
            if self.faults.context_fails(job):
                raise ContextUnavailable("injected fault: the context could not be made")
            ctx = self.pool.take(lambda: job.cancel_flag.raised, refill=self._spare_during_prompt(job))
        except ContextUnavailable as exc:
            self._watchdog.disarm()
            job.emit(self._started(job))  # the job did start: its stream opens with `started` (section 3)
            self._finish(job, _Result(error_code=self._oom_code(), error_message=str(exc)))
            return
        if ctx is None:  # cancelled while its context was still being made: nothing to free
            self._watchdog.disarm()
            job.emit(self._started(job))
            self._finish(job, _Result(stopped_at=time.perf_counter()))
            return
        sampler = 0
        try:
            llama_cpp.llama_set_abort_callback(ctx, self._abort_callback, job.cancel_flag.address)
            sampler = new_sampler(job.sampling, self.model.n_vocab)
            job.emit(self._started(job))
            result = self._generate(job, ctx, sampler)
        except Exception as exc:  # a bug or an engine fault: end this job, keep the worker
            log_event(
                "job_internal_error",
                job_id=job.job_id,
                correlation_id=job.correlation_id,
                error=repr(exc),
            )
            result = _Result(error_code=ErrorCode.INTERNAL, error_message=f"inference failed: {exc}")
        finally:
            self._watchdog.disarm()
            if sampler:
                free_sampler(sampler)
            self.pool.release(ctx)  # before the terminal event, always
        self._finish(job, result)

    def _spare_during_prompt(self, job: Job) -> bool:
        """Whether the next spare context may be made while this job's prompt is evaluated.

        On the CPU, making a context (mostly clearing a KV cache: ~27 ms at n_ctx
        4096 on 2 cores) takes a core from the prompt's evaluation, and for a
        one-chunk prompt that is the job's whole time to first token: its spare
        is made after the first token instead. A longer prompt absorbs it, and a
        prompt evaluated on a GPU does not need the CPU.
        """
        return self.model.info.backend != "cpu" or job.prompt_token_count > self.prefill_chunk

    def _started(self, job: Job) -> Event:
        return events.started(
            job.job_id,
            self.model.info.name,
            job.started_at or "",
            job.sampling.seed,
            len(job.prompt_tokens),
            job.correlation_id,
        )

    def _fail_unexpectedly(self, job: Job, exc: Exception) -> None:
        log_event(
            "job_internal_error", job_id=job.job_id, correlation_id=job.correlation_id, error=repr(exc)
        )
        job.finish(
            Outcome(
                JobState.FAILED,
                events.error(ErrorCode.INTERNAL, f"inference failed: {exc}", False, tokens_out=job.tokens_out),
                error_code=ErrorCode.INTERNAL,
            )
        )

    # -- generation: the hot path ----------------------------------------------------------

    def _generate(self, job: Job, ctx: int, sampler: int) -> _Result:
        flag = job.cancel_flag
        decode = self.faults.decode_for(job, llama_cpp.llama_decode)
        batch_get_one = llama_cpp.llama_batch_get_one

        t0 = time.perf_counter()
        n_prompt = len(job.prompt_tokens)
        prompt = (llama_cpp.llama_token * n_prompt)(*job.prompt_tokens)
        base = ctypes.addressof(prompt)
        for start in range(0, n_prompt, self.prefill_chunk):
            if flag.raised:
                return _Result(stopped_at=time.perf_counter())
            n = min(self.prefill_chunk, n_prompt - start)
            rc = decode(ctx, batch_get_one(ctypes.cast(base + start * _TOKEN_SIZE, _TOKEN_P), n))
            if rc != 0:
                return self._decode_failed(rc, flag)
        t1 = time.perf_counter()
        job.phase = Phase.DECODE

        sample = llama_cpp.llama_sampler_sample
        piece = self.model.piece
        eog = self.model.eog_tokens
        utf8 = Utf8Assembler().feed
        stops = StopMatcher(job.sampling.stop) if job.sampling.stop else None
        emit = job.emit
        keep = job.append_text
        max_tokens = job.sampling.max_tokens
        current = (llama_cpp.llama_token * 1)()
        next_batch = batch_get_one(current, 1)
        n_out = 0
        index = 0
        while True:
            if flag.raised:
                return _Result(stopped_at=time.perf_counter(), prompt_ms=_ms(t0, t1))
            token = sample(sampler, ctx, -1)
            if token in eog:
                reason = "eos"
                break
            n_out += 1
            job.tokens_out = n_out
            text = utf8(piece(token))
            if stops is not None:
                text = stops.feed(text)
            if text:
                emit(Event("token", {"t": text, "i": index}))
                keep(text)
                index += 1
                if index == 1:  # the first token is out: the next spare may take a core now
                    self.pool.refill()
            if stops is not None and stops.stopped:
                reason = "stop"
                break
            if n_out >= max_tokens:
                reason = "max_tokens"
                break
            current[0] = token
            rc = decode(ctx, next_batch)
            if rc != 0:
                failed = self._decode_failed(rc, flag)
                failed.prompt_ms = _ms(t0, t1)
                return failed
        if stops is not None and reason != "stop":
            tail = stops.flush()
            if tail:
                emit(Event("token", {"t": tail, "i": index}))
                keep(tail)
        return _Result(stop_reason=reason, prompt_ms=_ms(t0, t1), decode_ms=_ms(t1, time.perf_counter()))

    def _decode_failed(self, rc: int, flag: CancelFlag) -> _Result:
        # Only the job's own abort callback makes llama_decode return "aborted", so
        # an abort is always the outcome of whoever raised the flag (client,
        # disconnect, timeout, shutdown), never an engine failure.
        if rc == DECODE_ABORTED and (flag.raised or flag.native_is_raised()):
            return _Result(stopped_at=time.perf_counter())
        code = ErrorCode.CUDA_ERROR if self.model.info.backend == "cuda" and rc < 0 else ErrorCode.INTERNAL
        return _Result(error_code=code, error_message=f"llama_decode failed with status {rc}")

    def _oom_code(self) -> ErrorCode:
        return ErrorCode.VRAM_OOM if self.model.info.backend == "cuda" else ErrorCode.INTERNAL

    # -- the terminal event ----------------------------------------------------------------

    def _finish(self, job: Job, result: _Result) -> None:
        """Emit the job's one terminal event; memory is already released."""
        if result.stopped_at is not None:
            self._finish_cancelled(job, result)
            return
        if result.error_code is not None:
            job.finish(
                Outcome(
                    JobState.FAILED,
                    events.error(
                        result.error_code,
                        result.error_message,
                        retriable=result.error_code is not ErrorCode.INTERNAL,
                        tokens_out=job.tokens_out,
                    ),
                    error_code=result.error_code,
                )
            )
            log_event(
                "job_failed",
                job_id=job.job_id,
                correlation_id=job.correlation_id,
                code=result.error_code.value,
                error=result.error_message,
            )
            return
        assert result.stop_reason is not None
        job.finish(
            Outcome(
                JobState.COMPLETED,
                events.end(job.tokens_out, round(result.decode_ms, 3), result.stop_reason),
                stop_reason=result.stop_reason,
            )
        )

    def _finish_cancelled(self, job: Job, result: _Result) -> None:
        flag = job.cancel_flag
        reason = flag.reason or CancelReason.CLIENT
        raised_at = flag.raised_at or result.stopped_at
        assert result.stopped_at is not None and raised_at is not None
        stop_ms = round(max(0.0, result.stopped_at - raised_at) * 1000.0, 3)
        phase = "prompt" if job.phase is Phase.PROMPT else "decode"
        code, message, retriable = cancel_error(reason)
        cancel_ms = elapsed_ms(raised_at)
        job.finish(
            Outcome(
                JobState.CANCELLED if code is ErrorCode.CANCELLED else JobState.FAILED,
                events.error(
                    code,
                    message,
                    retriable,
                    tokens_out=job.tokens_out,
                    stop_ms=stop_ms,
                    cancel_ms=cancel_ms,
                ),
                error_code=code,
                stop_ms=stop_ms,
                cancel_ms=cancel_ms,
            )
        )
        # Logged after the event: the client should not wait for our log writes.
        log_event(
            "cancel_ack",
            job_id=job.job_id,
            correlation_id=job.correlation_id,
            reason=reason.value,
            phase=phase,
            stop_ms=stop_ms,
        )
        log_event(
            "cancelled",
            job_id=job.job_id,
            correlation_id=job.correlation_id,
            reason=reason.value,
            phase=phase,
            tokens_out=job.tokens_out,
            stop_ms=stop_ms,
            cancel_ms=cancel_ms,
        )


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000.0
