"""Floors under the worker's figures: what no design on top of this engine and this HTTP stack can beat.

    python -m bench.floors [--model PATH] [--threads N] [--samples 200] [--json PATH]

1. The engine's floor for `stop_ms`: how long llama_decode runs on after the flag
   is raised. 2. The HTTP floor under the time to first token: the round trip of a
   Starlette endpoint that returns a constant, under uvicorn, read by the same
   pooled httpx client the benchmarks use, with the same idle pause before each.
3. The worker's own `POST /cancel` round trip (an unknown job id: nothing to
   stop), on an idle worker and while it streams a long answer, the same pauses
   between requests: whether a busy engine, or HTTP itself, sets the cancel's
   transit times.

Engine floor. No HTTP, no job, no event: in this process, on the worker's own pieces (model,
context settings, C cancel flag and abort callback), a decode thread evaluates
tokens (one per llama_decode, as in a job's decode phase) or prompt batches (the
worker's CPU ubatch), and a second thread raises the native flag at a random
moment inside a llama_decode call. Reported: raise → llama_decode returned, in
ms, next to an unaborted call's time. The abort callback runs after
each graph node, so no design on top of llama.cpp can stop sooner than this;
the worker's `stop_ms` adds the loop's own steps (the GIL, the cancel_ack
record) to it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import llama_cpp

from bench.harness import prompts
from bench.harness.processes import worker_server
from bench.harness.stats import summary
from bench.harness.worker_client import WorkerClient
from testkit.processes import free_port, scratch_dir
from worker_orcd.channel import native
from worker_orcd.config import default_model_path, default_state_dir
from worker_orcd.engine import cpu_features
from worker_orcd.engine.contexts import CPU_UBATCH, ContextSettings, free_context, new_context
from worker_orcd.engine.model import Model
from worker_orcd.server import GIL_SWITCH_SEC

_TOKEN_P = ctypes.POINTER(llama_cpp.llama_token)


def measure(model: Model, settings: ContextSettings, *, batch: int, samples: int, seed: int) -> dict:
    """`samples` aborts of llama_decode calls of `batch` tokens each, raised at random moments."""
    rng = random.Random(seed)
    flag = native.library().orcd_cancel_flag_new()
    callback = llama_cpp.ggml_abort_callback(native.abort_callback_address())
    tokens = (llama_cpp.llama_token * batch)(*([model.tokenize("Hello there,", add_special=False)[0]] * batch))
    ctx = new_context(model, settings)
    llama_cpp.llama_set_abort_callback(ctx, callback, flag)
    try:
        full = _decode_times(ctx, tokens, batch, min(20, samples))  # how long an unaborted call takes
        typical = sorted(full)[len(full) // 2]
        stops: list[float] = []
        missed = 0
        lib = native.library()
        for _ in range(samples):
            lib.orcd_cancel_flag_free(flag)  # a fresh, lowered flag for each sample
            flag = lib.orcd_cancel_flag_new()
            llama_cpp.llama_set_abort_callback(ctx, callback, flag)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            _prime(ctx, tokens, batch)
            delay = rng.uniform(0.1, 0.9) * typical
            raised_at: list[float] = []
            started = threading.Event()

            def raiser() -> None:
                started.wait()
                time.sleep(delay)  # the moment is stamped below, after the wake-up
                raised_at.append(time.perf_counter())
                lib.orcd_cancel_flag_raise(flag)

            t = threading.Thread(target=raiser)
            t.start()
            started.set()
            rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ctypes.cast(tokens, _TOKEN_P), batch))
            returned = time.perf_counter()
            t.join()
            if rc != 2:  # finished before the flag came up
                missed += 1
                continue
            stops.append((returned - raised_at[0]) * 1000)
        return {
            "batch_tokens": batch,
            "decode_ms_unaborted": summary([x * 1000 for x in full]),
            "raise_to_return_ms": summary(stops),
            # a long node (the output projection) shows as a block of slow stops
            "share_over_1ms": round(sum(x > 1.0 for x in stops) / max(len(stops), 1), 3),
            "finished_before_raise": missed,
        }
    finally:
        free_context(ctx)
        native.library().orcd_cancel_flag_free(flag)


def _prime(ctx: int, tokens, batch: int) -> None:
    """For one-token decodes, 32 cells in the cache first, as in a job after its prompt."""
    if batch == 1:
        prime = (llama_cpp.llama_token * 32)(*([tokens[0]] * 32))
        llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ctypes.cast(prime, _TOKEN_P), 32))


def _decode_times(ctx: int, tokens, batch: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        _prime(ctx, tokens, batch)
        t0 = time.perf_counter()
        llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ctypes.cast(tokens, _TOKEN_P), batch))
        out.append(time.perf_counter() - t0)
    return out


CONSTANT_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def constant(request):
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/constant", constant, methods=["GET", "POST"])])
"""


def http_floor(samples: int, settle_s: float) -> dict:
    """Round trips to a do-nothing Starlette app: after an idle pause (as the TTFT samples) and back to back."""
    port = free_port()
    code = CONSTANT_APP + f"\nimport uvicorn\nuvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning', http='httptools')\n"
    server = subprocess.Popen([sys.executable, "-c", code])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get("/constant")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

            def round_trips(pause: float) -> list[float]:
                out = []
                for _ in range(samples):
                    if pause:
                        time.sleep(pause)
                    t0 = time.perf_counter()
                    client.post("/constant", json={"job_id": "x"})
                    out.append((time.perf_counter() - t0) * 1000)
                return out

            round_trips(0)  # warm up
            return {
                "after_idle_pause_ms": summary(round_trips(settle_s)),
                "back_to_back_ms": summary(round_trips(0)),
                "idle_pause_s": settle_s,
            }
    finally:
        server.terminate()
        server.wait(10)


def cancel_round_trips(samples: int, model: Path | None) -> dict:
    """`POST /cancel` round trips to a real worker, idle and during a long decode."""
    scratch = scratch_dir()
    server = worker_server(model, [], scratch).start()
    client = WorkerClient(server.url)
    rng = random.Random(7)
    try:
        client.warm_up()

        def round_trips(n: int, busy: threading.Event | None = None) -> list[float]:
            out = []
            while len(out) < n and (busy is None or not busy.is_set()):
                time.sleep(rng.uniform(0.005, 0.03))  # as a client would: not back to back
                t0 = time.perf_counter()
                client.http.post("/cancel", json={"job_id": "no-such-job"}).raise_for_status()
                out.append((time.perf_counter() - t0) * 1000)
            return out

        idle = round_trips(samples)
        busy: list[float] = []
        story = 0
        while len(busy) < samples:
            done = threading.Event()
            story += 1
            job = threading.Thread(target=lambda: (client.stream(prompts.story(story), 600), done.set()))
            job.start()
            time.sleep(0.5)  # its prompt is evaluated: what follows lands in decode
            busy += round_trips(samples - len(busy), done)
            job.join()
        return {"idle_ms": summary(idle), "during_decode_ms": summary(busy)}
    finally:
        client.close()
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: every core, as `serve`)")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settle", type=float, default=0.2, help="idle pause before each HTTP sample, as `python -m bench`")
    p.add_argument("--json", type=Path, dest="json_path")
    args = p.parse_args(argv)
    sys.setswitchinterval(GIL_SWITCH_SEC)  # as `serve`
    http = http_floor(args.samples, args.settle)
    http["worker_cancel"] = cancel_round_trips(args.samples, args.model)
    threads = args.threads or os.cpu_count() or 1
    model_path = args.model or default_model_path()
    # The same check and cache as the worker's: a CPU whose extra buffer types trap
    # must not take this process down either.
    extra = cpu_features.decide(
        "auto", model_path=model_path, state_dir=default_state_dir(), threads=threads, gpu_device=None
    )
    model = Model(model_path, gpu_device=None, extra_buffers=extra.enabled)
    settings = ContextSettings(args.n_ctx, 256, threads)
    result = {
        "threads": threads,
        "cpu_extra_buffers": extra.health(),
        "http": http,
        "decode": measure(model, settings, batch=1, samples=args.samples, seed=args.seed),
        "prompt": measure(model, settings, batch=CPU_UBATCH, samples=args.samples, seed=args.seed + 1),
    }
    for name in ("decode", "prompt"):
        r = result[name]
        s, u = r["raise_to_return_ms"], r["decode_ms_unaborted"]
        print(
            f"{name:7} batch {r['batch_tokens']:4}: llama_decode {_ms(u['p50'])} ms unaborted; "
            f"flag raised → returned p50 {_ms(s['p50'])} p95 {_ms(s['p95'])} p99 {_ms(s['p99'])} max {_ms(s['max'])} ms "
            f"(n {s['n']}, {r['finished_before_raise']} finished first; {r['share_over_1ms']:.0%} over 1 ms)"
        )
    for name, label in (("after_idle_pause_ms", f"after {args.settle:g} s idle"), ("back_to_back_ms", "back to back")):
        h = http[name]
        print(f"HTTP round trip to a constant Starlette endpoint, {label}: p50 {h['p50']:.3f} p95 {h['p95']:.3f} ms")
    for name, label in (("idle_ms", "an idle worker"), ("during_decode_ms", "a worker decoding")):
        h = http["worker_cancel"][name]
        print(f"POST /cancel round trip to {label}: p50 {h['p50']:.3f} p95 {h['p95']:.3f} p99 {h['p99']:.3f} ms")
    if args.json_path:
        args.json_path.write_text(json.dumps(result, indent=2))
    model.close()
    return 0


def _ms(value: float | None) -> str:
    """No figure when every call finished before its flag came up (a loaded machine)."""
    return "—" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
