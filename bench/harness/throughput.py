"""Scenarios 1 and 2: streaming tokens/s, and time to first token on an idle server.

Tokens/s is the time between tokens after the first (the decode speed, the same
definition for every side); the worker and the peer are read over HTTP by this
process, the bare loop runs in it. Time to first token runs from the request
(or the tokenizer call) to the first token, with a pause before each request so
the server is idle.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

from bench.harness.cpu import CpuProbe, per_token_us
from bench.harness.quiet import QuietGuard, take
from bench.harness.sides import Side, rotated
from bench.harness.stats import summary


def streaming(
    sides: list[Side],
    *,
    rounds: int,
    max_tokens: int,
    prompt: Callable[[int], str],
    settle_s: float,
    cpu: dict[str, CpuProbe] | None = None,
    guard: QuietGuard | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """`cpu` maps side names to probes of their server process, for CPU time per token."""
    cpu = cpu or {}
    cpu_use: dict[str, dict[str, list[float]]] = {name: {} for name in cpu}
    rates: dict[str, list[float]] = {s.name: [] for s in sides}
    per_token: dict[str, list[float]] = {s.name: [] for s in sides}
    tokens: dict[str, list[int]] = {s.name: [] for s in sides}
    stops: dict[str, Counter] = {s.name: Counter() for s in sides}
    for r in range(rounds):
        for side in rotated(sides, r):
            probe = cpu.get(side.name)

            def once(side=side, probe=probe):
                side.prepare()
                time.sleep(settle_s)
                before = probe.sample() if probe else None
                run = side.stream(prompt(r), max_tokens)
                use = per_token_us(before, probe.sample(), run.tokens) if probe and before else {}
                return run, use

            run, use = take(guard, once)
            for key, value in use.items():
                if value is not None:
                    cpu_use[side.name].setdefault(key, []).append(value)
            if run.ms_per_token is None:
                raise RuntimeError(f"{side.name} gave {run.tokens} tokens")
            rates[side.name].append(run.tokens_per_s)
            per_token[side.name].append(run.ms_per_token)
            tokens[side.name].append(run.tokens)
            stops[side.name][run.stop_reason or "unknown"] += 1
        progress(f"streaming: round {r + 1}/{rounds}")
    out = {
        s.name: {
            "tokens_per_s": summary(rates[s.name], 2),
            "ms_per_token": summary(per_token[s.name]),
            "tokens_min": min(tokens[s.name]),
            "stop_reasons": dict(stops[s.name]),
            "per_round": [round(v, 2) for v in rates[s.name]],  # tokens/s, round by round (paired ratios)
        }
        for s in sides
    }
    for name, use in cpu_use.items():
        if name in out and use:
            out[name]["cpu_us_per_token"] = {key: summary(values, 1)["p50"] for key, values in use.items()}
    return out


def first_token(
    sides: list[Side],
    *,
    samples: int,
    prompt: Callable[[int], str],
    settle_s: float,
    guard: QuietGuard | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    ttft: dict[str, list[float]] = {s.name: [] for s in sides}
    for i in range(samples):
        for side in rotated(sides, i):

            def once(side=side):
                side.prepare()
                time.sleep(settle_s)
                return side.first_token(prompt(1000 + i))

            run = take(guard, once)
            if run.ttft_ms is None:
                raise RuntimeError(f"{side.name} gave no token")
            ttft[side.name].append(run.ttft_ms)
        if (i + 1) % 10 == 0:
            progress(f"time to first token: {i + 1}/{samples}")
    return {
        s.name: {"ttft_ms": summary(ttft[s.name]), "per_sample": [round(v, 3) for v in ttft[s.name]]}
        for s in sides
    }
