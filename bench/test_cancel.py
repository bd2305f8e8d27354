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

import pytest

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


# Where the cancel lands (scenarios 3 and 4): the group, the job's prompt and max_tokens, how
# far it is taken before the cancel (untimed), the rounds, the first prompt number.
CANCEL_POINTS = {
    "decode": ("3 cancel during decode", prompts.story, 512, lambda w, job: w.read_tokens(job, AFTER), CANCELS, 2000),
    "prompt": ("4 cancel during a long prompt", prompts.long_prompt, 16, lambda w, job: w.wait_until(job, DELAY_S), PROMPT_CANCELS, 6000),
}


@pytest.mark.parametrize(("group", "prompt", "max_tokens", "reach", "rounds", "first"), CANCEL_POINTS.values(), ids=CANCEL_POINTS)
def test_cancel_during(benchmark, worker, group, prompt, max_tokens, reach, rounds, first):
    benchmark.group = group
    runs = []
    numbers = itertools.count(first)

    def setup():
        settle()
        job = worker.open_job(prompt(next(numbers)), max_tokens=max_tokens)
        reach(worker, job)
        return (job,), {}

    def cancel(job):
        runs.append(worker.cancel_and_finish(job))

    benchmark.pedantic(cancel, setup=setup, rounds=rounds, iterations=1)
    _record(benchmark, runs)


def _idle(side, n: int) -> None:
    settle()


def _idle_peer(peer, n: int) -> None:
    peer.forget_prompt()  # its prompt cache would spare it work the worker does
    settle()


def _after(cut_short):
    """The idle pause, then a job cut short: `cut_short(side, prompt number)`."""

    def before(side, n: int) -> None:
        settle()
        cut_short(side, n)

    return before


# The next job's first token (scenario 5), idle or right after a job cut short: the worker's
# is cancelled, the peer's disconnected. Each case: the side, what comes before each timed
# request (given the side and a prompt number), the rounds, the first prompt numbers of the
# jobs cut short and of the timed ones.
NEXT_JOB = {
    "worker-idle": ("worker", _idle, CANCELS, 0, 3000),
    "worker-after-decode-cancel": ("worker", _after(lambda w, n: w.cancel_after_tokens(prompts.story(n), AFTER, max_tokens=512)), CANCELS, 2500, 3500),
    "worker-after-prompt-cancel": ("worker", _after(lambda w, n: w.cancel_after_delay(prompts.long_prompt(n), DELAY_S, max_tokens=16)), PROMPT_CANCELS, 6500, 7500),
    "peer-idle": ("peer", _idle_peer, PEER_CANCELS, 0, 5000),
    "peer-after-decode-disconnect": ("peer", _after(lambda p, n: p.abandon_after_tokens(prompts.story(n), AFTER, max_tokens=512)), PEER_CANCELS, 4000, 4500),
    "peer-after-prompt-disconnect": ("peer", _after(lambda p, n: p.abandon_after_delay(prompts.long_prompt(n), DELAY_S, max_tokens=16)), PEER_PROMPT_CANCELS, 8000, 8500),
}


@pytest.mark.parametrize(("side_name", "before", "rounds", "cut_first", "timed_first"), NEXT_JOB.values(), ids=NEXT_JOB)
def test_next_first_token(benchmark, request, side_name, before, rounds, cut_first, timed_first):
    benchmark.group = f"5 next job's first token ({side_name})"
    side = request.getfixturevalue(side_name)
    cut_numbers, numbers = itertools.count(cut_first), itertools.count(timed_first)
    runs = []

    def setup():
        before(side, next(cut_numbers))
        return (), {}

    def once():
        runs.append(side.first_token(prompts.story(next(numbers))))

    benchmark.pedantic(once, setup=setup, rounds=rounds, iterations=1)
    benchmark.extra_info["ttft_ms"] = summary(r.ttft_ms for r in runs)
