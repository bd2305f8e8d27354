"""The report as text tables (for a terminal) and as JSON (for machines and RESULTS.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from bench.harness.extra_buffers import describe as describe_extra_buffers


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _load1(load: list[float] | None) -> str:
    return "—" if not load else f"{load[0]:.2f}"


def lookup(d: Any, *keys: Any) -> Any:
    """The value at `keys` in nested dicts; None where a level is missing or not a dict
    (a part that did not run leaves its block out)."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    mod = report["model"]
    parts = [
        f"worker-orcd bench — {m['date']} — {m['cpu']}, {m['cores']} cores"
        + (f" ({', '.join(m['cpu_flags'])})" if m.get("cpu_flags") else "")
        + f", extra CPU buffers {describe_extra_buffers(m.get('cpu_extra_buffers'))}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f" — load {m.get('load_average_at_start')} → {m.get('load_average_at_end')}",
        f"model {mod['file']} ({mod['quant']}, {mod['backend']}, n_ctx {mod['n_ctx']})",
    ]
    s = report["scenarios"]
    c = report["comparisons"]
    if "stream" in s or "ttft" in s:
        names = list((s.get("stream") or s.get("ttft")).keys())
        rows = []
        if "stream" in s:
            rows.append(["1 streaming tokens/s p50", *[lookup(s["stream"], n, "tokens_per_s", "p50") for n in names]])
            rows.append(["  ms/token p50", *[lookup(s["stream"], n, "ms_per_token", "p50") for n in names]])
            rows.append(["  tokens per run (min)", *[lookup(s["stream"], n, "tokens_min") for n in names]])
            rows.append(["  server main-thread CPU µs/token", *[lookup(s["stream"], n, "cpu_us_per_token", "event_loop_us") for n in names]])
            rows.append(["  server process CPU µs/token", *[lookup(s["stream"], n, "cpu_us_per_token", "worker_process_us") for n in names]])
            rows.append(["  client CPU µs/token", *[lookup(s["stream"], n, "cpu_us_per_token", "client_us") for n in names]])
        if "ttft" in s:
            rows.append(["2 idle TTFT ms p50", *[lookup(s["ttft"], n, "ttft_ms", "p50") for n in names]])
            rows.append(["  idle TTFT ms p95", *[lookup(s["ttft"], n, "ttft_ms", "p95") for n in names]])
        parts += ["", table(["figure", *names], rows)]
        ratios = []
        if "stream" in c:
            cs = c["stream"]
            ratios.append(["tokens/s worker ÷ " + str(cs["best_bare"]), cs["worker_over_best_bare"], cs["worker_over_best_bare_paired"]])
            ratios.append(["tokens/s worker ÷ peer", cs["worker_over_peer"], cs["worker_over_peer_paired"]])
            if cs.get("worker_over_llama_server_paired") is not None:
                ratios.append(["tokens/s worker ÷ llama-server", None, cs["worker_over_llama_server_paired"]])
            ratios.append(["front CPU/token (all threads) ÷ peer main thread", cs.get("worker_process_cpu_over_peer_loop_cpu"), None])
        if "ttft" in c:
            ct = c["ttft"]
            ratios.append(["TTFT worker − " + str(ct["best_bare"]) + " (ms)", ct["worker_minus_best_bare_ms"], ct["worker_minus_best_bare_ms_paired"]])
            ratios.append(["TTFT worker − peer (ms)", ct["worker_minus_peer_ms"], None])
        parts += ["", table(["comparison", "of medians", "paired"], ratios)]
    cancel_cols = [k for k in ("cancel_decode", "cancel_prompt") if k in s]
    if cancel_cols:
        w = {k: s[k]["worker"] for k in cancel_cols}
        rows = []
        for label, key in (("client-observed ms", "client_ms"), ("POST /cancel → 202 ms", "ack_ms"),
                           ("stop_ms", "stop_ms"), ("cancel_ms", "cancel_ms")):
            for p in ("p50", "p95", "p99"):
                rows.append([f"{label} {p}", *[lookup(w[k], key, p) for k in cancel_cols]])
        rows.append(["tokens after cancel p50", *[lookup(w[k], "tokens_after_cancel", "p50") for k in cancel_cols]])
        rows.append(["tokens after cancel max", *[lookup(w[k], "tokens_after_cancel", "max") for k in cancel_cols]])
        rows.append(["cancels (hit)", *[f"{w[k]['cancels']} {w[k]['hit']}" for k in cancel_cols]])
        rows.append(["5 free after cancel: worker extra TTFT ms p50",
                     *[lookup(w[k], "free_after_cancel", "extra_ms", "p50") for k in cancel_cols]])
        rows.append(["  peer extra TTFT ms p50 (after a disconnect)",
                     *[lookup(s[k], "peer", "free_after_cancel", "extra_ms", "p50") for k in cancel_cols]])
        headers = ["cancel (3, 4)", *[{"cancel_decode": "during decode", "cancel_prompt": "during prompt"}[k] for k in cancel_cols]]
        parts += ["", table(headers, rows)]
    if "overhead" in s:
        o = s["overhead"]
        parts += ["", table(["6 cancel-check overhead", "checked", "unchecked", "overhead %"], [
            ["whole runs: loop ms/token p50", lookup(o, "ms_per_token", "checked", "p50"),
             lookup(o, "ms_per_token", "unchecked", "p50"), o.get("runs_overhead_pct")],
            ["whole runs: llama_decode ms/token p50", lookup(o, "engine_ms_per_token", "checked", "p50"),
             lookup(o, "engine_ms_per_token", "unchecked", "p50"), o.get("runs_engine_overhead_pct")],
            ["whole runs: paired % min / max", lookup(o, "runs_overhead_pct_spread", "min"),
             lookup(o, "runs_overhead_pct_spread", "max"), f"n={lookup(o, 'runs_overhead_pct_spread', 'n')}"],
            [f"callback, decode by decode ({o.get('callback_pairs')} pairs)", None, None, o.get("callback_overhead_pct")],
            ["flag check per token", None, None, o.get("flag_check_pct")],
            ["held to the target: callback + flag check", None, None, o.get("overhead_pct")],
        ])]
    if "memory" in s:
        mm = s["memory"]
        mb = lambda d, k: None if not d or d.get(k) is None else round(d[k] / 2**20, 1)  # noqa: E731
        rows = [[label, mb(mm[key], "rss_bytes"), mb(mm[key], "vram_bytes")] for label, key in (
            ("idle, before a job", "idle_before"), ("during a job", "during_job"),
            ("right after CANCELLED", "right_after_cancelled"), ("after settling", "after_settle"),
            (f"after {mm['first_cycles']} execute/cancel cycles", "after_first_cycles"),
            (f"after {mm['cycles']} cycles", "after_all_cycles"))]
        rows.append(["growth, first → all cycles (%)", mm["rss_growth_pct"], mm["vram_growth_pct"]])
        parts += ["", table(["7 memory (MiB)", "RSS", "VRAM"], rows)]
    if "neighbours" in s:
        nb = s["neighbours"]
        counts = list(nb["counts"])
        rows = [[f"{side} tokens/s p50", *[lookup(nb["counts"][n], side, "tokens_per_s", "p50") for n in counts]]
                for side in ("worker", "peer")]
        rows.append(["worker ÷ its idle speed", None, *[lookup(nb, "comparisons", n, "worker_over_its_idle") for n in counts[1:]]])
        rows.append(["peer ÷ its idle speed", None, *[lookup(nb, "comparisons", n, "peer_over_its_idle") for n in counts[1:]]])
        rows.append(["worker ÷ peer", None, *[lookup(nb, "comparisons", n, "worker_over_peer") for n in counts[1:]]])
        rows.append(["worker decode threads in use", *[lookup(nb["counts"][n], "worker_threads", "current") for n in counts]])
        rows.append(["cancel during decode, client ms p99", *[lookup(nb["counts"][n], "cancel_decode", "client_ms", "p99") for n in counts]])
        parts += ["", table(["8 beside busy processes", *[f"{n} busy" for n in counts]], rows)]
    conditions = report.get("conditions") or {}
    if conditions:
        parts += ["", table(["conditions", "seconds", "load before → after", "retaken", "kept disturbed", "max foreign cores"], [
            [name, v["seconds"], f"{_load1(v['load_before'])} → {_load1(v['load_after'])}",
             lookup(v, "quiet", "retaken"), lookup(v, "quiet", "kept_disturbed"), lookup(v, "quiet", "foreign_cores_max")]
            for name, v in conditions.items()
        ])]
    parts += ["", table(["target", "value", "limit", "met"], [
        [t["description"], t["value"], f"{t['op']} {t['limit']} {t['unit']}", t["met"]] for t in report["targets"]
    ])]
    for note in report.get("notes", []):
        parts.append(f"note: {note}")
    return "\n".join(parts)
