"""The engine process: it owns the model and its contexts, and runs what the front sends.

Started by the front (`worker_orcd.supervisor.engine_process`) as
`python -P -m worker_orcd.engine …`, with the channel's socket and the cancel
board inherited as file descriptors, its settings the channel's first frame,
and its environment (glibc tunables) set at spawn. It checks the CPU's extra buffer types, loads the model, makes the
spare context and says `ready` (or `failed`, with the one-line reason); then
its main thread answers `tokenize` at once (safe beside a running decode: it
reads only the vocabulary) and hands `run` to the inference thread.

It never handles a signal meant for the worker: SIGINT and SIGTERM (a terminal's
Ctrl-C, a service manager stopping the group) are the front's to act on, and
the front ends this process with `exit` or, when it must, SIGKILL. If the front
dies, so does the engine (parent-death signal, and the channel's end).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys

from worker_orcd import log
from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.frames import Channel
from worker_orcd.channel.messages import (
    EngineFailed,
    EngineReady,
    Exit,
    PrefillChunk,
    RunRequest,
    Tokenize,
    Tokens,
)
from worker_orcd.engine.parent import die_with_parent
from worker_orcd.settings import engine as engine_settings

GIL_SWITCH_SEC = 0.0005  # a thread back from llama.cpp waits at most this for the GIL


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The descriptors it inherits; its settings come over the channel."""
    p = argparse.ArgumentParser(prog="python -m worker_orcd.engine")
    p.add_argument("--channel-fd", type=int, required=True)
    p.add_argument("--board-fd", type=int, required=True)
    p.add_argument("--log-fd", type=int, default=None, help="where JSON log lines go (default: stderr)")
    return p.parse_args(argv)


def _detach_from_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()


def _lower_priority(levels: int) -> None:
    """Relative to the front's own level, for every thread this process will have
    (llama.cpp's workers included)."""
    if levels:
        try:
            os.nice(levels)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    channel = Channel(args.channel_fd)
    config = engine_settings.decode(channel.recv_frame())  # the front's first frame
    _detach_from_signals()
    _lower_priority(config.engine_nice)
    sys.setswitchinterval(GIL_SWITCH_SEC)
    log_stream = os.fdopen(args.log_fd, "w", buffering=1) if args.log_fd is not None else None
    log.configure(config.worker_id, config.log_level, log_stream)
    board = CancelBoard(config.board_slots, fd=args.board_fd)

    from worker_orcd.engine import cpu_features, prefill
    from worker_orcd.engine.contexts import ContextPool, ContextSettings, ContextUnavailable
    from worker_orcd.engine.faults import FaultPlan
    from worker_orcd.engine.loop import InferenceLoop, Run
    from worker_orcd.engine.model import Model, ModelLoadError
    from worker_orcd.engine.slots import BatchLoop
    from worker_orcd.engine.threads import Threads

    faults = FaultPlan.from_env()
    faults.at_start()
    try:
        extra = cpu_features.decide(
            config.cpu_extra_buffers,
            model_path=config.model_path,
            state_dir=config.state_dir,
            threads=config.threads,
            gpu_device=config.gpu_device,
        )
        model = Model(config.model_path, gpu_device=config.gpu_device, extra_buffers=extra.enabled)
        extra.log()
        settings = ContextSettings(config.n_ctx, 0, config.threads, flash_attn=config.flash_attn)
        if config.prefill_chunk is None:
            chunk = prefill.choose(model, settings, config.stop_budget_ms)
        else:
            chunk = prefill.fixed(config.prefill_chunk)
            prefill.warm_up(model, settings)
        log.log_event("prefill_chunk", backend=model.info.backend, **chunk.health())
        settings = dataclasses.replace(settings, n_batch=chunk.tokens)
        threads = Threads.choose(config.threads, fixed=bool(config.n_threads))
        pool: ContextPool | None = None
        loop: InferenceLoop | BatchLoop
        make_ms: float | None
        if config.parallel > 1:  # one context of N sequences, owned by the loop: no pool, no spare
            step = prefill.choose_step(model, settings, config.stop_budget_ms, most=chunk.tokens)
            step_health = step.health()
            log.log_event("step_tokens", **step_health)
            loop = BatchLoop(
                model,
                channel,
                settings,
                parallel=config.parallel,
                prefill_chunk=chunk.tokens,
                step_tokens=step.tokens,
                step_measured_ms=step_health["measured_ms"],
                cells_offset=board.cells_offset,
                threads=threads,
                faults=faults,
            )
            log.log_event("slots", **loop.health())
            make_ms = loop.make_ms
        else:
            pool = ContextPool(model, settings, spare=config.spare_context)
            log.log_event("spare_context", **pool.spare.health())
            loop = InferenceLoop(model, pool, channel, prefill_chunk=chunk.tokens, threads=threads, faults=faults)
            make_ms = pool.last_make_ms
    except (ModelLoadError, ContextUnavailable, ValueError, RuntimeError) as exc:
        channel.send(EngineFailed(str(exc)))
        return 1
    loop.start()
    channel.send(
        EngineReady(
            pid=os.getpid(),
            model=model.info,
            prefill_chunk=PrefillChunk(**chunk.health()),
            flash_attn=config.flash_attn,
            gpu=model.device.describe() if model.device is not None else None,
            spare_context=pool.spare.health() if pool is not None else None,
            cpu_extra_buffers=extra.health(),
            threads=threads.health(),
            context_make_ms=make_ms,
            nice=config.engine_nice,
            slots=loop.health() if isinstance(loop, BatchLoop) else None,
        )
    )
    try:
        while True:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                break  # the front has gone
            if isinstance(message, Tokenize):
                channel.send(Tokens(message.request, [model.tokenize(t, add_special=s) for t, s in message.texts]))
            elif isinstance(message, RunRequest):
                loop.submit(
                    Run(
                        number=message.run,
                        job_id=message.job_id,
                        prompt_tokens=message.prompt_tokens,
                        sampling=message.sampling,
                        flag_address=board.address(message.slot),
                    )
                )
            elif isinstance(message, Exit):
                break
    finally:
        # The run in progress ends first: the model is never freed under a decode.
        if loop.close(timeout=30):
            if pool is not None:
                pool.close()
            model.close()
        channel.close()
    return 0
