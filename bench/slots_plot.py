"""The slots' picture, drawn from a committed report of `python -m bench.slots`.

    python -m bench.slots_plot REPORT.json OUT.png

Two panels against the number of concurrent streams, one line per server:
aggregate tokens/s, and the inter-token gap's p99. Needs matplotlib (the `bench` extra).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

STYLE = {  # the worker's lines solid, the peers' dashed
    "worker-p1": ("tab:blue", ":"),
    "worker-p4": ("tab:blue", "-"),
    "worker-p8": ("navy", "-"),
    "worker-p4-b100": ("tab:green", "-"),
    "peer": ("tab:gray", "--"),
    "llama-server-np1": ("tab:orange", ":"),
    "llama-server-np4": ("tab:orange", "--"),
    "llama-server-np8": ("tab:red", "--"),
}


def draw(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    loads = report["throughput"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for side, by_streams in loads.items():
        streams = sorted(int(n) for n in by_streams)
        color, dash = STYLE.get(side, (None, "-"))
        aggregate = [by_streams[str(n)]["aggregate_tokens_per_s"] for n in streams]
        itl_p99 = [by_streams[str(n)]["itl_ms"]["p99"] for n in streams]
        left.plot(streams, aggregate, marker="o", color=color, linestyle=dash, label=side)
        right.plot(streams, itl_p99, marker="o", color=color, linestyle=dash, label=side)
    for ax, title in ((left, "aggregate tokens/s"), (right, "inter-token gap p99 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["settings"]["streams"], [str(n) for n in report["settings"]["streams"]])
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    m, s = report["machine"], report["settings"]
    fig.suptitle(
        f"{s['model']}, {s['max_tokens']} tokens a stream, {s['threads']} threads; {m['cpu']}, {m['cores']} cores",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    draw(json.loads(Path(args[0]).read_text()), Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
