"""The engine process: it owns the model and its contexts, and runs what the front sends.

Started by the front (`worker_orcd.supervisor.engine_process`) as
`python -P -m worker_orcd.engine …`, with the channel's socket and the cancel
board inherited as file descriptors and its environment (glibc tunables) set
at spawn. It checks the CPU's extra buffer types, loads the model, makes the
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
from pathlib import Path

from worker_orcd import log
from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.frames import Channel
from worker_orcd.channel.messages import (
    EngineFailed,
    EngineReady,
    Exit,
    ModelInfo,
    PrefillChunk,
    RunRequest,
    Tokenize,
    Tokens,
)
from worker_orcd.engine.parent import die_with_parent

GIL_SWITCH_SEC = 0.0005  # a thread back from llama.cpp waits at most this for the GIL


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m worker_orcd.engine")
    p.add_argument("--channel-fd", type=int, required=True)
    p.add_argument("--board-fd", type=int, required=True)
    p.add_argument("--board-slots", type=int, default=1)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--gpu-device", type=int, default=None)
    p.add_argument("--n-ctx", type=int, required=True)
    p.add_argument("--prefill-chunk", default="auto", help="auto or a number of tokens")
    p.add_argument("--stop-budget-ms", type=float, default=20.0)
    p.add_argument("--spare-context", default="auto")
    p.add_argument("--flash-attn", default="auto")
    p.add_argument("--threads", type=int, required=True, help="the most threads llama.cpp computes with")
    p.add_argument("--fixed-threads", action="store_true", help="always --threads (else chosen by timing)")
    p.add_argument("--nice", type=int, default=0, help="nice levels below the front")
    p.add_argument("--cpu-extra-buffers", default="auto")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--worker-id", default="")
    p.add_argument("--log-level", default="info")
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
    _detach_from_signals()
    _lower_priority(args.nice)
    sys.setswitchinterval(GIL_SWITCH_SEC)
    log.configure(
        args.worker_id, args.log_level, os.fdopen(args.log_fd, "w", buffering=1) if args.log_fd is not None else None
    )
    channel = Channel(args.channel_fd)
    board = CancelBoard(args.board_slots, fd=args.board_fd)

    from worker_orcd.engine import cpu_features, prefill
    from worker_orcd.engine.contexts import ContextPool, ContextSettings, ContextUnavailable
    from worker_orcd.engine.faults import FaultPlan
    from worker_orcd.engine.loop import InferenceLoop, Run
    from worker_orcd.engine.threads import Threads
    from worker_orcd.engine.model import Model, ModelLoadError

    faults = FaultPlan.from_env()
    faults.at_start()
    try:
        extra = cpu_features.decide(
            args.cpu_extra_buffers,
            model_path=args.model,
            state_dir=args.state_dir,
            threads=args.threads,
            gpu_device=args.gpu_device,
        )
        model = Model(args.model, gpu_device=args.gpu_device, extra_buffers=extra.enabled)
        extra.log()
        settings = ContextSettings(args.n_ctx, 0, args.threads, flash_attn=args.flash_attn)
        if args.prefill_chunk == "auto":
            chunk = prefill.choose(model, settings, args.stop_budget_ms)
        else:
            chunk = prefill.fixed(int(args.prefill_chunk))
            prefill.warm_up(model, settings)
        log.log_event("prefill_chunk", backend=model.info.backend, **chunk.health())
        settings = dataclasses.replace(settings, n_batch=chunk.tokens)
        pool = ContextPool(model, settings, spare=args.spare_context)
        log.log_event("spare_context", **pool.spare.health())
    except (ModelLoadError, ContextUnavailable, ValueError, RuntimeError) as exc:
        channel.send(EngineFailed(str(exc)))
        return 1
    threads = Threads.choose(args.threads, fixed=args.fixed_threads)
    loop = InferenceLoop(model, pool, channel, prefill_chunk=chunk.tokens, threads=threads, faults=faults)
    loop.start()
    info = model.info
    channel.send(
        EngineReady(
            pid=os.getpid(),
            model=ModelInfo(
                name=info.name,
                path=info.path,
                size_bytes=info.size_bytes,
                quant_kind=info.quant_kind,
                tokenizer_kind=info.tokenizer_kind,
                vocab_size=info.vocab_size,
                n_ctx_train=info.n_ctx_train,
                backend=info.backend,
                gpu_layers=info.gpu_layers,
                chat_template=info.chat_template,
                bos_token=info.bos_token,
                eos_token=info.eos_token,
                bos_id=info.bos_id,
            ),
            prefill_chunk=PrefillChunk(**chunk.health()),
            flash_attn=args.flash_attn,
            gpu=model.device.describe() if model.device is not None else None,
            spare_context=pool.spare.health(),
            cpu_extra_buffers=extra.health(),
            threads=threads.health(),
            context_make_ms=pool.last_make_ms,
            nice=args.nice,
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
            pool.close()
            model.close()
        channel.close()
    return 0
