"""What the thread governor learns from (WO-THREADS-1): the real engine loop on the real model.

A decode that ran while the engine made its spare context shared the cores with
that making; it says nothing of the thread count, so the governor is not told of it.
"""

from __future__ import annotations

import ctypes

import llama_cpp

from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.config import default_model_path
from worker_orcd.engine.contexts import ContextSettings, free_context, new_context
from worker_orcd.engine.loop import InferenceLoop, Run
from worker_orcd.engine.model import Model
from worker_orcd.engine.sampling import free_sampler, new_sampler
from worker_orcd.engine.threads import Threads
from worker_orcd.jobs.job import Sampling

TOKENS = 24
MAKING_FOR = 10  # the spare is "being made" during the first this many tokens


class Channel:
    def __init__(self) -> None:
        self.tokens = 0

    def send_token(self, run: int, tokens_out: int, text: str) -> None:
        self.tokens += 1

    def send(self, message: dict) -> None:
        pass


class Pool:
    """A spare being made until the channel has seen MAKING_FOR tokens."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    @property
    def making(self) -> bool:
        return self.channel.tokens < MAKING_FOR

    def refill(self) -> None:
        pass


def test_decodes_during_the_spares_making_are_not_samples():
    model = Model(default_model_path(), gpu_device=None, extra_buffers=False)  # runs on any x86 CPU
    channel = Channel()
    threads = Threads.choose(2, fixed=False)
    observed: list[float] = []
    observe = threads.decode.observe
    threads.decode.observe = lambda seconds: observed.append(seconds) or observe(seconds)
    loop = InferenceLoop(model, Pool(channel), channel, prefill_chunk=128, threads=threads)
    board = CancelBoard(1)
    run = Run(
        number=1,
        job_id="samples",
        prompt_tokens=model.tokenize("<|im_start|>user\nTell me a long story.<|im_end|>\n<|im_start|>assistant\n"),
        sampling=Sampling(max_tokens=TOKENS, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=0),
        flag_address=board.address(0),
    )
    ctx = new_context(model, ContextSettings(512, 128, 2))
    sampler = new_sampler(run.sampling, model.n_vocab)
    try:
        facts = loop._generate(run, ctypes.c_int.from_address(run.flag_address), ctx, sampler)
        assert llama_cpp.llama_perf_context(ctx).n_eval >= TOKENS - 1
    finally:
        free_sampler(sampler)
        free_context(ctx)
        model.close()
    assert facts.stop_reason == "max_tokens" and facts.tokens_out == TOKENS
    # A decode follows every token but the last; those begun or ended while the spare was
    # being made (the first MAKING_FOR tokens' decodes) are left out.
    assert len(observed) == TOKENS - MAKING_FOR
