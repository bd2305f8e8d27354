"""Pool the paired samples of several committed benchmark reports (`python -m bench`).

    python -m bench.pool bench/results/2026-11-25-run1.json bench/results/2026-11-25-run2.json ...

One run cannot resolve a few ms of time to first token or a few per cent of
streaming speed on a shared machine; the per-sample (per-round) pairs of every
run given are pooled, and their median is reported with a bootstrap 95 %
interval. Only what the reports hold is used: a claim in RESULTS.md made on a
pooled figure names the reports and this command.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

BOOTSTRAP = 4000
BASELINE = "bare@2t"


def paired(report: dict[str, Any]) -> dict[str, list[float]]:
    """Worker − baseline TTFT per sample (ms) and worker ÷ baseline tokens/s per round."""
    scenarios = report["scenarios"]
    out: dict[str, list[float]] = {}
    ttft = scenarios.get("ttft", {})
    if "worker" in ttft and BASELINE in ttft:
        out["ttft_minus_bare_ms"] = [
            w - b for w, b in zip(ttft["worker"]["per_sample"], ttft[BASELINE]["per_sample"])
        ]
    stream = scenarios.get("stream", {})
    if "worker" in stream and BASELINE in stream:
        out["stream_over_bare"] = [
            w / b for w, b in zip(stream["worker"]["per_round"], stream[BASELINE]["per_round"])
        ]
    return out


def pooled(samples: list[float], seed: int = 1) -> dict[str, float | int]:
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(samples, k=len(samples))) for _ in range(BOOTSTRAP))
    return {
        "pairs": len(samples),
        "median": round(statistics.median(samples), 3),
        "ci95_low": round(medians[int(BOOTSTRAP * 0.025)], 3),
        "ci95_high": round(medians[int(BOOTSTRAP * 0.975) - 1], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    args = parser.parse_args(argv)
    per_run: dict[str, list[dict[str, Any]]] = {}
    every: dict[str, list[float]] = {}
    for path in args.reports:
        report = json.loads(path.read_text())
        cpu = report.get("machine", {}).get("cpu")
        for key, samples in paired(report).items():
            per_run.setdefault(key, []).append(
                {"report": path.name, "cpu": cpu, "pairs": len(samples), "median": round(statistics.median(samples), 3)}
            )
            every.setdefault(key, []).extend(samples)
    result = {key: {"runs": per_run[key], "pooled": pooled(samples)} for key, samples in every.items()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
