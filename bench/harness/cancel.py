"""Scenarios 3, 4 and 5: cancels during decode and during a long prompt, and what they leave behind.

Worker: each cancel is `POST /cancel` on the pooled client while the stream is
open; the figures are the client's (cancel sent → CANCELLED read, tokens read
after the cancel was sent) and the worker's own (`stop_ms`, `cancel_ms` from the
CANCELLED event).

Free after cancel (scenario 5): right after each CANCELLED, the next job is sent
and its time to first token compared with an idle one measured in the same
loop. The extra is what the cancelled job still costs the worker.

Peer: its only cancel is a disconnect, and nothing reports when it took
effect, so the figure is the next request's wait, compared the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from bench.harness.peer_client import PeerClient
from bench.harness.quiet import QuietGuard, take
from bench.harness.stats import percentile, summary
from bench.harness.worker_client import WorkerClient

Prompt = Callable[[int], str]


@dataclass(frozen=True)
class Rounds:
    """A run of cancel rounds, the worker's or the peer's. Round i: an idle first token on probe
    prompt 2i, the cancelled job, then the next job's first token on probe prompt 2i + 1."""

    count: int
    probe_prompt: Prompt
    settle_s: float
    label: str  # names the run in progress lines
    guard: QuietGuard | None = None
    progress: Callable[[str], None] = lambda _: None


def worker_cancels(client: WorkerClient, rounds: Rounds, cancel: Callable[[int], Any]) -> dict[str, Any]:
    """`rounds.count` rounds of: idle first token, one cancelled job, the next job's first token."""
    runs = []
    idle: list[float] = []
    after: list[float] = []
    count = rounds.count

    def one_round(i: int):
        idle_ms = _idle_ttft(client, rounds, i)
        run = cancel(i)
        return idle_ms, run, _ttft(client.first_token(rounds.probe_prompt(2 * i + 1)))

    for i in range(count):
        idle_ms, run, after_ms = take(rounds.guard, lambda: one_round(i))
        idle.append(idle_ms)
        runs.append(run)
        after.append(after_ms)
        if (i + 1) % 10 == 0:
            rounds.progress(f"{rounds.label}: {i + 1}/{count} cancels")
    return {
        "cancels": count,
        "hit": dict(Counter(r.hit for r in runs)),
        "codes": dict(Counter(r.code for r in runs)),
        "client_ms": summary(r.client_ms for r in runs),
        "ack_ms": summary(r.ack_ms for r in runs),
        "stop_ms": summary(r.stop_ms for r in runs if r.stop_ms is not None),
        "cancel_ms": summary(r.cancel_ms for r in runs if r.cancel_ms is not None),
        "tokens_after_cancel": summary((r.tokens_after for r in runs), 2),
        "tokens_out": summary((r.tokens_out or 0 for r in runs), 2),
        "free_after_cancel": _free(idle, after),
    }


def peer_disconnects(peer: PeerClient, rounds: Rounds, disconnect: Callable[[int, str], Any]) -> dict[str, Any]:
    """The same rounds, each cancel a disconnect that also times the next job (given its prompt)."""
    idle: list[float] = []
    after: list[float] = []
    count = rounds.count

    def one_round(i: int):
        peer.forget_prompt()
        idle_ms = _idle_ttft(peer, rounds, i)
        return idle_ms, disconnect(i, rounds.probe_prompt(2 * i + 1))

    for i in range(count):
        idle_ms, run = take(rounds.guard, lambda: one_round(i))
        idle.append(idle_ms)
        if run.next_ttft_ms is None:
            raise RuntimeError("the peer gave no token after a disconnect")
        after.append(run.next_ttft_ms)
        rounds.progress(f"{rounds.label}: {i + 1}/{count} disconnects")
    return {"disconnects": count, "free_after_cancel": _free(idle, after)}


def _idle_ttft(side: WorkerClient | PeerClient, rounds: Rounds, i: int) -> float:
    """Round i's idle first token, with the pause before it and the one before the cancel."""
    time.sleep(rounds.settle_s)
    idle_ms = _ttft(side.first_token(rounds.probe_prompt(2 * i)))
    time.sleep(rounds.settle_s)
    return idle_ms


def _ttft(run) -> float:
    if run.ttft_ms is None:
        raise RuntimeError("no first token")
    return run.ttft_ms


def _free(idle: list[float], after: list[float]) -> dict[str, Any]:
    """The next job's first token after a cancel, against the idle median."""
    base = percentile(idle, 50) or 0.0
    return {
        "idle_ttft_ms": summary(idle),
        "next_ttft_ms": summary(after),
        "extra_ms": summary(a - base for a in after),
    }
