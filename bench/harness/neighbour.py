"""Scenario 8: streaming and cancelling beside busy neighbours.

A monitoring agent, a log shipper or a compile on the same machine is a process
that wants a core. The scenario starts such neighbours itself: processes that
spin at normal priority (nice 0, whatever this process runs at), one or two,
and streams through the worker and the peer, interleaved, with none, one and
two of them running; beside one it also cancels during decode. The figures are
each side's tokens/s against its own speed with no neighbour, the worker
against the peer in the same conditions, and the cancel's client-observed
time. Samples are not guarded for quiet: the load is the point.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from bench.harness import cancel, prompts, throughput
from bench.harness.rig import Rig
from bench.harness.stats import ratio

BUSY_LOOP = "while True: pass"
COUNTS = (0, 1, 2)
PROMPT_NUMBERS = 10_000  # prompt numbers of this scenario (see scenarios.py)
MAX_TOKENS_CANCELLED = 512


@contextmanager
def busy_neighbours(count: int) -> Iterator[list[int]]:
    """`count` processes spinning at nice 0 until the block ends."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUSY_LOOP],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=_normal_priority,
        )
        for _ in range(count)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _normal_priority() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 0)  # a child inherits our nice level; a neighbour has its own


def beside_neighbours(rig: Rig, progress: Callable[[str], None]) -> dict[str, Any]:
    s, client = rig.settings, rig.client
    sides = [side for side in rig.sides if side.kind in ("worker", "peer")]
    out: dict[str, Any] = {"counts": {}}
    for count in COUNTS:
        with busy_neighbours(count):
            block = throughput.streaming(
                sides,
                rounds=s.neighbour_rounds,
                max_tokens=s.neighbour_tokens,
                prompt=lambda r, count=count: prompts.story(PROMPT_NUMBERS + 100 * count + r),
                settle_s=s.settle_s,
                progress=lambda text, count=count: progress(f"beside {count} busy: {text}"),
            )
            if count == 1 and s.neighbour_cancels:
                story = prompts.story
                block["cancel_decode"] = cancel.worker_cancels(
                    client,
                    cancel.Rounds(
                        count=s.neighbour_cancels,
                        probe_prompt=lambda i: story(PROMPT_NUMBERS + 600 + i),
                        settle_s=s.settle_s,
                        label="cancel during decode beside 1 busy",
                        progress=progress,
                    ),
                    lambda i: client.cancel_after_tokens(
                        story(PROMPT_NUMBERS + 500 + i), s.cancel_after, MAX_TOKENS_CANCELLED
                    ),
                )
            block["worker_threads"] = (client.health().get("threads") or {}).get("decode")
        out["counts"][str(count)] = block
    out["comparisons"] = _compare(out["counts"])
    return out


def _p50(block: dict[str, Any], side: str) -> float | None:
    return ((block.get(side) or {}).get("tokens_per_s") or {}).get("p50")


def _compare(counts: dict[str, Any]) -> dict[str, Any]:
    idle = counts["0"]
    result: dict[str, Any] = {}
    for count, block in counts.items():
        if count == "0":
            continue
        result[count] = {
            "worker_over_its_idle": ratio(_p50(block, "worker"), _p50(idle, "worker")),
            "peer_over_its_idle": ratio(_p50(block, "peer"), _p50(idle, "peer")),
            "worker_over_peer": ratio(_p50(block, "worker"), _p50(block, "peer")),
        }
    return result
