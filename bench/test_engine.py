"""Scenarios 6 and 7: the cancel checks' cost on the generation path, and memory over many cycles."""

from __future__ import annotations

import itertools

import pytest

from bench.conftest import DEFAULTS, settle
from bench.harness import prompts
from bench.harness.memory import MemoryProbe
from bench.harness.overhead import OverheadBench, OverheadSettings
from bench.harness.stats import summary


@pytest.fixture(scope="module")
def engine(model, cpu_extra_buffers, run_settings):
    bench = OverheadBench(
        OverheadSettings(
            model=model,
            n_ctx=run_settings.n_ctx,
            n_threads=run_settings.threads,
            prefill_chunk=run_settings.prefill_chunk,
            gpu_device=None,
            tokens=DEFAULTS.overhead_tokens,
            rounds=DEFAULTS.overhead_rounds,
            extra_buffers=cpu_extra_buffers,
        )
    )
    bench.generate("checked", 0)  # warm caches
    yield bench
    bench.close()


@pytest.mark.parametrize("variant", ["checked", "unchecked"])
def test_cancel_check_overhead(benchmark, engine, variant):
    """Compare the two variants' extra_info ms_per_token; the timed figure includes the prompt."""
    benchmark.group = f"6 generation path, {DEFAULTS.overhead_tokens} tokens"
    loop_ms, engine_ms = [], []
    numbers = itertools.count(1)

    def once():
        ms, eval_ms = engine.generate(variant, next(numbers))
        loop_ms.append(ms)
        engine_ms.append(eval_ms)

    benchmark.pedantic(once, rounds=DEFAULTS.overhead_rounds, iterations=1)
    benchmark.extra_info["ms_per_token"] = summary(loop_ms)
    benchmark.extra_info["engine_ms_per_token"] = summary(engine_ms)


def test_abort_callback_decode_by_decode(benchmark, engine):
    """One generation per round whose decodes alternate with and without the abort callback."""
    benchmark.group = f"6 generation path, {DEFAULTS.overhead_tokens} tokens"
    pairs = []
    numbers = itertools.count(1)

    benchmark.pedantic(lambda: pairs.extend(engine.toggled(next(numbers))), rounds=DEFAULTS.overhead_rounds, iterations=1)
    benchmark.extra_info["callback_overhead_pct"] = summary(((a / b - 1.0) * 100.0 for a, b in pairs if b), 3)


def test_execute_cancel_cycles_memory(benchmark, worker, worker_proc):
    """One execute/cancel cycle per round; resident memory after the first ones and after all."""
    benchmark.group = "7 execute/cancel cycle"
    probe = MemoryProbe(worker_proc.pid, None)
    numbers = itertools.count(10000)
    rounds_done = itertools.count()
    rss = {}

    def setup():
        # Untimed: sampled before the round that follows the first cycles.
        if next(rounds_done) == DEFAULTS.first_cycles:
            settle()
            rss["first"] = probe.sample()["rss_bytes"]
        return (), {}

    def cycle():
        worker.cancel_after_tokens(prompts.story(next(numbers)), after=1, max_tokens=64)

    benchmark.pedantic(cycle, setup=setup, rounds=DEFAULTS.cycles, iterations=1)
    settle()
    rss["all"] = probe.sample()["rss_bytes"]
    benchmark.extra_info["rss_after_first_cycles"] = rss.get("first")
    benchmark.extra_info["rss_after_all_cycles"] = rss["all"]
    if rss.get("first"):
        benchmark.extra_info["rss_growth_pct"] = round((rss["all"] - rss["first"]) * 100.0 / rss["first"], 3)
