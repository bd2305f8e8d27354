"""Scenarios 3, 4 and 5: cancel during decode and during a long prompt, and the next job after it.

For the worker, pytest-benchmark times exactly the client-observed cancel:
from sending POST /cancel to reading CANCELLED (the job is started and read up
to the cancel point in the untimed setup). The worker's own stop_ms and
cancel_ms, and tokens read after the cancel, are in extra_info.

"Free after cancel" times the next job's first token right after a cancel,
against the same request on an idle server; the peer's cancel is a disconnect.
"""

from __future__ import annotations

import itertools

from bench.conftest import DEFAULTS, settle
from bench.harness import prompts
from bench.harness.stats import summary

CANCELS = DEFAULTS.cancels
AFTER = DEFAULTS.cancel_after
PROMPT_CANCELS = DEFAULTS.prompt_cancels
DELAY_S = DEFAULTS.prompt_cancel_delay_s
PEER_CANCELS = DEFAULTS.peer_cancels
PEER_PROMPT_CANCELS = DEFAULTS.peer_prompt_cancels


def _record(benchmark, runs) -> None:
    benchmark.extra_info["client_ms"] = summary(r.client_ms for r in runs)
    benchmark.extra_info["stop_ms"] = summary(r.stop_ms for r in runs if r.stop_ms is not None)
    benchmark.extra_info["cancel_ms"] = summary(r.cancel_ms for r in runs if r.cancel_ms is not None)
    benchmark.extra_info["tokens_after_cancel"] = summary(r.tokens_after for r in runs)
    benchmark.extra_info["hit"] = sorted({r.hit for r in runs})


def test_cancel_during_decode(benchmark, worker):
    benchmark.group = "3 cancel during decode"
    runs = []
    numbers = itertools.count(2000)

    def setup():
        settle()
        job = worker.open_job(prompts.story(next(numbers)), max_tokens=512)
        worker.read_tokens(job, AFTER)
        return (job,), {}

    def cancel(job):
        runs.append(worker.cancel_and_finish(job))

    benchmark.pedantic(cancel, setup=setup, rounds=CANCELS, iterations=1)
    _record(benchmark, runs)


def test_cancel_during_prompt(benchmark, worker):
    benchmark.group = "4 cancel during a long prompt"
    runs = []
    numbers = itertools.count(6000)

    def setup():
        settle()
        job = worker.open_job(prompts.long_prompt(next(numbers)), max_tokens=16)
        worker.wait_until(job, DELAY_S)
        return (job,), {}

    def cancel(job):
        runs.append(worker.cancel_and_finish(job))

    benchmark.pedantic(cancel, setup=setup, rounds=PROMPT_CANCELS, iterations=1)
    _record(benchmark, runs)


def _first_token_after(benchmark, side, before, rounds, numbers):
    runs = []

    def setup():
        before()
        return (), {}

    def once():
        runs.append(side.first_token(prompts.story(next(numbers))))

    benchmark.pedantic(once, setup=setup, rounds=rounds, iterations=1)
    benchmark.extra_info["ttft_ms"] = summary(r.ttft_ms for r in runs)


def test_worker_first_token_idle(benchmark, worker):
    benchmark.group = "5 next job's first token (worker)"
    _first_token_after(benchmark, worker, settle, CANCELS, itertools.count(3000))


def test_worker_first_token_after_decode_cancel(benchmark, worker):
    benchmark.group = "5 next job's first token (worker)"
    numbers = itertools.count(2500)

    def cancel():
        settle()
        worker.cancel_after_tokens(prompts.story(next(numbers)), AFTER, max_tokens=512)

    _first_token_after(benchmark, worker, cancel, CANCELS, itertools.count(3500))


def test_worker_first_token_after_prompt_cancel(benchmark, worker):
    benchmark.group = "5 next job's first token (worker)"
    numbers = itertools.count(6500)

    def cancel():
        settle()
        worker.cancel_after_delay(prompts.long_prompt(next(numbers)), DELAY_S, max_tokens=16)

    _first_token_after(benchmark, worker, cancel, PROMPT_CANCELS, itertools.count(7500))


def test_peer_first_token_idle(benchmark, peer):
    benchmark.group = "5 next job's first token (peer)"

    def forget_and_settle():
        peer.forget_prompt()  # its prompt cache would spare it work the worker does
        settle()

    _first_token_after(benchmark, peer, forget_and_settle, PEER_CANCELS, itertools.count(5000))


def test_peer_first_token_after_decode_disconnect(benchmark, peer):
    benchmark.group = "5 next job's first token (peer)"
    numbers = itertools.count(4000)

    def disconnect():
        settle()
        peer.abandon_after_tokens(prompts.story(next(numbers)), AFTER, max_tokens=512)

    _first_token_after(benchmark, peer, disconnect, PEER_CANCELS, itertools.count(4500))


def test_peer_first_token_after_prompt_disconnect(benchmark, peer):
    benchmark.group = "5 next job's first token (peer)"
    numbers = itertools.count(8000)

    def disconnect():
        settle()
        peer.abandon_after_delay(prompts.long_prompt(next(numbers)), DELAY_S, max_tokens=16)

    _first_token_after(benchmark, peer, disconnect, PEER_PROMPT_CANCELS, itertools.count(8500))
