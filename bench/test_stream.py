"""Scenarios 1 and 2: streaming speed and idle time to first token, every side on the same prompts.

pytest-benchmark times whole requests; the figures to compare are in each
benchmark's extra_info (tokens/s between tokens, time to first token).
"""

from __future__ import annotations

import itertools

from bench.conftest import DEFAULTS, idle_setup
from bench.harness import prompts
from bench.harness.stats import summary

STREAM_ROUNDS = DEFAULTS.rounds
MAX_TOKENS = DEFAULTS.max_tokens
TTFT_ROUNDS = DEFAULTS.ttft_samples


def test_streaming(benchmark, side):
    benchmark.group = f"1 streaming {MAX_TOKENS} tokens"
    runs = []
    numbers = itertools.count()

    def once():
        runs.append(side.stream(prompts.story(next(numbers)), MAX_TOKENS))

    benchmark.pedantic(once, setup=idle_setup(side), rounds=STREAM_ROUNDS, iterations=1)
    benchmark.extra_info["tokens_per_s"] = summary((r.tokens_per_s for r in runs), 2)
    benchmark.extra_info["ms_per_token"] = summary(r.ms_per_token for r in runs)
    benchmark.extra_info["tokens_min"] = min(r.tokens for r in runs)


def test_first_token(benchmark, side):
    benchmark.group = "2 idle time to first token"
    runs = []
    numbers = itertools.count(1000)

    def once():
        runs.append(side.first_token(prompts.story(next(numbers))))

    benchmark.pedantic(once, setup=idle_setup(side), rounds=TTFT_ROUNDS, iterations=1)
    benchmark.extra_info["ttft_ms"] = summary(r.ttft_ms for r in runs)
