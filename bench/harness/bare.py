"""The floor: llama-cpp-python's `Llama.generate` loop in this process, no HTTP at all.

The KV cache is reset before every run, so the prompt is evaluated in full, as
the worker does with its fresh per-job context. Tokenizing is inside the
timing, as it is inside the worker's.
"""

from __future__ import annotations

import time
from pathlib import Path

import llama_cpp

from bench.harness import extra_buffers as extra
from bench.harness.runs import StreamRun


class BareLoop:
    def __init__(
        self,
        model: Path,
        *,
        n_ctx: int,
        n_batch: int,
        gpu_layers: int,
        gpu_device: int,
        extra_buffers: bool = True,  # the worker's setting (its /health), so both run the same kernels
    ) -> None:
        self.llm = extra.llama(
            extra_buffers,
            model_path=str(model),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_gpu_layers=gpu_layers,
            main_gpu=gpu_device,
            verbose=False,
        )
        self.threads = self.llm.n_threads

    def set_threads(self, n: int) -> None:
        if n != self.threads:
            llama_cpp.llama_set_n_threads(self.llm.ctx, n, n)
            self.threads = n

    def stream(self, prompt: str, max_tokens: int) -> StreamRun:
        """`max_tokens` tokens, EOS or not: the loop is the caller's to stop."""
        llm = self.llm
        run = StreamRun(sent_at=time.perf_counter())
        llm.reset()
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        times = run.token_times
        for _ in llm.generate(tokens, temp=0.0, reset=True):
            times.append(time.perf_counter())
            if len(times) >= max_tokens:
                break
        run.stop_reason = "max_tokens"
        return run

    def warm_up(self, threads: tuple[int, ...]) -> None:
        """One short run per thread count: the first run of a context is slow."""
        for n in threads:
            self.set_threads(n)
            self.stream("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", 64)

    def first_token(self, prompt: str) -> StreamRun:
        return self.stream(prompt, max_tokens=1)

    def close(self) -> None:
        self.llm.close()
