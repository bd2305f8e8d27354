"""`python -m bench.ray_serve`: worker-orcd on Ray Serve against one of its own workers reached directly.

    python -m bench.ray_serve --json bench/results/ray-serve.json

Starts the application with the local command (`python -m worker_orcd.serve_ray`,
a local Ray cluster, fixed replicas), then measures, alternating the two sides
request by request so both see the same machine:

- the Serve path: client → Serve's HTTP proxy → the Router → the Worker replica
  → its worker (cancels: client → proxy → Router → the owner's worker);
- the direct path: the same client → one replica's worker, on its own port.

Figures: idle time to first token; streaming tokens/s (decode, first token to
last) and its ratio Serve ÷ direct; cancels during decode, client-observed (sent
→ `CANCELLED` read) and their 202; what the cancel's routing costs: the cancel's
202 through Serve less the direct one, split by the router's `Server-Timing`
into the router's own time and the proxy's hop, for a cancel that finds its owner
(`X-Cancel-Route: cached`) and one fanned out to every replica (an id nobody holds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.harness.machine import describe, load_average
from bench.harness.stats import percentile, ratio, summary
from bench.harness.worker_client import WorkerClient
from testkit.processes import free_port
from worker_orcd.client.sse import SseEvent

SHORT_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
LONG_ANSWER = (
    "<|im_start|>user\nWrite a long, detailed story about a dragon who learns to bake bread."
    "<|im_end|>\n<|im_start|>assistant\n"
)
TIMING = re.compile(r"([a-z]+);dur=([0-9.]+)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ray_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="report path (default bench/results/<date>-ray-serve.json)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads per worker")
    p.add_argument("--ttft", type=int, default=20, help="first-token samples per side")
    p.add_argument("--streams", type=int, default=8, help="streams per side")
    p.add_argument("--stream-tokens", type=int, default=256)
    p.add_argument("--cancels", type=int, default=20, help="cancels during decode per side")
    p.add_argument("--cancel-after", type=int, default=8, help="token events read before the cancel")
    p.add_argument("--fanouts", type=int, default=20, help="cancels of unknown ids per side")
    return p.parse_args(argv)


class ServeApp:
    """The application, started by its local command in a process of its own."""

    def __init__(self, replicas: int, threads: int) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-ray-serve-"))
        self.ready = self.scratch / "ready.json"
        self.log = self.scratch / "serve.log"
        self.cmd = [
            sys.executable, "-m", "worker_orcd.serve_ray",
            "--port", str(free_port()),
            "--replicas", str(replicas), "--threads", str(threads), "--replica-cpus", str(threads),
            "--state-base", str(self.scratch / "state"),
            "--ready-file", str(self.ready),
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 300.0) -> "ServeApp":
        # In the caller's session, as the tests start it (see tests/ray/conftest.py).
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker-orcd on Ray Serve did not start; see {self.log}")
            time.sleep(0.2)
        self.info = json.loads(self.ready.read_text())
        return self

    def worker_urls(self) -> list[str]:
        """The replicas' workers, from the job directory (a second Ray driver)."""
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        import ray

        ray.init(address=self.info["ray_address"], logging_level="error", log_to_driver=False)
        try:
            directory = ray.get_actor(self.info["directory"], namespace=self.info["namespace"])
            deadline = time.monotonic() + 60
            while True:
                replicas = [r for r in ray.get(directory.list_replicas.remote()) if r["state"] == "live"]
                if len(replicas) >= 1 or time.monotonic() > deadline:
                    return [r["url"] for r in replicas]
                time.sleep(0.2)
        finally:
            ray.shutdown()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def timings(header: str | None) -> dict[str, float]:
    return {name: float(ms) for name, ms in TIMING.findall(header or "")}


def cancel_during_decode(side: WorkerClient, after: int) -> dict[str, Any]:
    """A job cancelled once `after` tokens were read: the 202's time, its route and the
    router's timings (Serve), and the time to `CANCELLED` read on the stream."""
    job = side.open_job(LONG_ANSWER, max_tokens=1024)
    try:
        side.read_tokens(job, after)
        sent = time.perf_counter()
        answer = side.http.post("/cancel", json={"job_id": job.job_id})
        acked = time.perf_counter()
        assert answer.status_code == 202, answer.text
        terminal: SseEvent | None = None
        for event in job.events:
            if event.name in ("end", "error"):
                terminal = event
                break
    finally:
        job.close()
    assert terminal is not None and terminal.data.get("code") == "CANCELLED", terminal
    return {
        "client_ms": (terminal.at - sent) * 1000.0,
        "ack_ms": (acked - sent) * 1000.0,
        "stop_ms": terminal.data.get("stop_ms"),
        "cancel_ms": terminal.data.get("cancel_ms"),
        "route": answer.headers.get("X-Cancel-Route"),
        "timing": timings(answer.headers.get("Server-Timing")),
    }


def cancel_unknown(side: WorkerClient) -> dict[str, Any]:
    job_id = side.new_job_id()
    sent = time.perf_counter()
    answer = side.http.post("/cancel", json={"job_id": job_id})
    acked = time.perf_counter()
    assert answer.status_code == 202, answer.text
    return {
        "ack_ms": (acked - sent) * 1000.0,
        "route": answer.headers.get("X-Cancel-Route"),
        "timing": timings(answer.headers.get("Server-Timing")),
    }


def alternate(n: int, sides: dict[str, WorkerClient], run) -> dict[str, list[Any]]:
    """`run(side)` n times per side, direct and Serve in turn (the first side alternates too)."""
    out: dict[str, list[Any]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(n):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(run(sides[name]))
    return out


def routing_summary(runs: list[dict[str, Any]], direct_ack: list[float]) -> dict[str, Any]:
    ack = [r["ack_ms"] for r in runs]
    router_total = [r["timing"].get("total") for r in runs if "total" in r["timing"]]
    proxy_hop = [r["ack_ms"] - r["timing"]["total"] for r in runs if "total" in r["timing"]]
    phases: dict[str, list[float]] = {}
    for r in runs:
        for name, ms in r["timing"].items():
            phases.setdefault(name, []).append(ms)
    return {
        "routes": sorted({r["route"] for r in runs if r["route"]}),
        "ack_ms": summary(ack),
        "extra_ack_ms_p50": round(percentile(ack, 50) - percentile(direct_ack, 50), 3),
        "extra_ack_ms_p99": round(percentile(ack, 99) - percentile(direct_ack, 99), 3),
        "router_ms": summary(router_total),
        "proxy_hop_ms": summary(proxy_hop),
        "router_phases_ms": {name: summary(values) for name, values in phases.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.setswitchinterval(0.0005)  # stamps of a reader thread wait less for the GIL
    started = datetime.now(timezone.utc)
    app = ServeApp(args.replicas, args.threads).start()
    try:
        urls = app.worker_urls()
        direct = WorkerClient(urls[0])
        serve = WorkerClient(app.info["url"])
        sides = {"direct": direct, "serve": serve}
        for name, side in sides.items():  # one worker's ledger sees both sides' ids
            side._prefix = f"{name}-{side._prefix}"
        health = serve.health()
        machine = describe(None, health.get("cpu_extra_buffers"))
        for side in sides.values():
            side.warm_up()
        print(f"serve {app.info['url']} ({len(urls)} replicas), direct {urls[0]}", flush=True)

        ttft = alternate(args.ttft, sides, lambda s: s.first_token(SHORT_PROMPT).ttft_ms)
        print("ttft done", flush=True)
        streams = alternate(args.streams, sides, lambda s: s.stream(LONG_ANSWER, args.stream_tokens).tokens_per_s)
        print("streams done", flush=True)
        cancels = alternate(args.cancels, sides, lambda s: cancel_during_decode(s, args.cancel_after))
        print("cancels done", flush=True)
        fanouts = alternate(args.fanouts, sides, cancel_unknown)
        print("fan-outs done", flush=True)

        pairs = [s / d for s, d in zip(streams["serve"], streams["direct"]) if s and d]
        direct_cancel_ack = [r["ack_ms"] for r in cancels["direct"]]
        direct_unknown_ack = [r["ack_ms"] for r in fanouts["direct"]]
        report = {
            "command": "python -m bench.ray_serve " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine,
            "settings": {
                "replicas": args.replicas,
                "threads": args.threads,
                "stream_tokens": args.stream_tokens,
                "cancel_after_tokens": args.cancel_after,
                "ray": _version("ray"),
            },
            "ttft_ms": {side: summary(v) for side, v in ttft.items()},
            "tokens_per_s": {side: summary(v) for side, v in streams.items()},
            "tokens_per_s_ratio": {
                "pairs": [round(p, 3) for p in pairs],
                "median_of_pairs": round(percentile(pairs, 50), 3) if pairs else None,
                "ratio_of_means": ratio(sum(streams["serve"]) / len(streams["serve"]), sum(streams["direct"]) / len(streams["direct"])),
            },
            "cancel_during_decode": {
                side: {
                    "client_ms": summary(r["client_ms"] for r in runs),
                    "ack_ms": summary(r["ack_ms"] for r in runs),
                    "stop_ms": summary(r["stop_ms"] for r in runs if r["stop_ms"] is not None),
                    "cancel_ms": summary(r["cancel_ms"] for r in runs if r["cancel_ms"] is not None),
                }
                for side, runs in cancels.items()
            },
            "cancel_routing": {
                "owner": routing_summary(cancels["serve"], direct_cancel_ack),
                "fanout": routing_summary(fanouts["serve"], direct_unknown_ack),
                "direct_unknown_id_ack_ms": summary(direct_unknown_ack),
            },
            "load_average_at_end": load_average(),
            "started": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
    finally:
        app.stop()
    path = args.json or Path("bench/results") / f"{started:%Y-%m-%d}-ray-serve.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"report: {path}")
    return 0


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def markdown(report: dict[str, Any]) -> str:
    def row(name: str, direct: Any, serve: Any, note: str = "") -> str:
        return f"| {name} | {direct} | {serve} | {note} |"

    t, s, c, r = report["ttft_ms"], report["tokens_per_s"], report["cancel_during_decode"], report["cancel_routing"]
    lines = [
        "| | direct | Serve | |",
        "| --- | --- | --- | --- |",
        row("idle TTFT p50 / p99 (ms)", f"{t['direct']['p50']} / {t['direct']['p99']}", f"{t['serve']['p50']} / {t['serve']['p99']}"),
        row(
            "streaming tokens/s p50",
            s["direct"]["p50"],
            s["serve"]["p50"],
            f"ratio {report['tokens_per_s_ratio']['median_of_pairs']} (median of pairs)",
        ),
        row(
            "cancel during decode, client-observed p50 / p99 (ms)",
            f"{c['direct']['client_ms']['p50']} / {c['direct']['client_ms']['p99']}",
            f"{c['serve']['client_ms']['p50']} / {c['serve']['client_ms']['p99']}",
        ),
        row(
            "cancel's 202 p50 / p99 (ms)",
            f"{c['direct']['ack_ms']['p50']} / {c['direct']['ack_ms']['p99']}",
            f"{c['serve']['ack_ms']['p50']} / {c['serve']['ack_ms']['p99']}",
            f"routing +{r['owner']['extra_ack_ms_p50']} ms p50: router {r['owner']['router_ms']['p50']}, proxy hop {r['owner']['proxy_hop_ms']['p50']}",
        ),
        row(
            "cancel of an unknown id (fan-out), 202 p50 / p99 (ms)",
            f"{r['direct_unknown_id_ack_ms']['p50']} / {r['direct_unknown_id_ack_ms']['p99']}",
            f"{r['fanout']['ack_ms']['p50']} / {r['fanout']['ack_ms']['p99']}",
            f"router {r['fanout']['router_ms']['p50']} (directory {r['fanout']['router_phases_ms'].get('directory', {}).get('p50')}, fan-out {r['fanout']['router_phases_ms'].get('fanout', {}).get('p50')})",
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
