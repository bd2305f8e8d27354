"""A "side" is one thing that generates: the worker, a bare loop at some thread count, the peer.

Scenarios run every side on the same prompts, interleaved, so a change in
machine load during the run falls on all of them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bench.harness.runs import StreamRun


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Side:
    name: str  # "worker", "bare@2t", "peer"
    kind: str  # "worker" | "bare" | "peer"
    stream: Callable[[str, int], StreamRun]
    first_token: Callable[[str], StreamRun]
    prepare: Callable[[], None] = _nothing  # before the idle pause that precedes a sample


def bare_side(loop, threads: int) -> Side:
    """The bare loop at a fixed thread count (set before every run: sides interleave)."""

    def stream(prompt: str, max_tokens: int) -> StreamRun:
        loop.set_threads(threads)
        return loop.stream(prompt, max_tokens)

    def first_token(prompt: str) -> StreamRun:
        loop.set_threads(threads)
        return loop.first_token(prompt)

    return Side(f"bare@{threads}t", "bare", stream, first_token)


def client_side(name: str, client) -> Side:
    prepare = getattr(client, "forget_prompt", _nothing)
    return Side(name, name, client.stream, client.first_token, prepare)


def rotated(sides: list[Side], r: int) -> list[Side]:
    """The sides in an order that changes every round."""
    k = r % len(sides) if sides else 0
    return sides[k:] + sides[:k]
