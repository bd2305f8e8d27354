"""Soak: many jobs from concurrent clients that cancel, cancel again and hang up at random.

    python -m bench.soak --jobs 1000 --clients 4 [--url URL [--pid PID]] [--seed N] [--json PATH]

Without --url it starts its own worker (extra flags with --worker-args) and stops
it at the end. The clients take jobs until the count is reached; each job picks
one of SCENARIOS with its own seeded generator: run to the end; cancel at a
random time after it started; cancel after k tokens; cancel 2-3 times, the
cancels racing each other; hang up after k tokens; cancel at once (while it
waits in the queue, when another job runs); cancel after the end.

After every job the stream is checked (events in order, exactly one terminal
event, nothing after it) and compared with GET /jobs/{id} (completed <-> `end`,
cancelled <-> `error CANCELLED`, same tokens_out, text, stop reason and cancel
latencies); a job whose client hung up is polled until it has ended, and must
end cancelled (reason `disconnect`) or, if it won the race, completed. At the
end every job is compared again, most of them now read back from the ledger, the
worker must be idle with no job left queued or running, its request counters
must match the outcomes, and its resident memory when idle (its child processes
included) must not have grown since the first 50 jobs.

Prints a summary (and writes it as JSON with --json); exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness.processes import worker_server
from testkit.processes import scratch_dir
from testkit.prompts import CHAT
from testkit.rss import rss_bytes
from testkit.waiting import wait_until
from worker_orcd.client import Client as WorkerApi
from worker_orcd.client import IncompleteStream, WorkerError

SCENARIOS = (
    "complete",  # read to the end
    "cancel_delay",  # POST /cancel a random delay after `started`
    "cancel_after_tokens",  # POST /cancel after k tokens
    "cancel_repeat",  # 2-3 cancels at random delays, racing each other
    "disconnect",  # close the stream after k tokens (0: right after the headers)
    "cancel_queued",  # POST /cancel as soon as the stream opens
    "late_cancel",  # read to the end, then cancel twice: nothing changes
)
PROMPTS = (
    CHAT.format("What is the capital of France?"),
    CHAT.format("Write a haiku about the sea."),
    CHAT.format("List three colours."),
    CHAT.format("Tell me a story about a dragon who learns to bake bread, " * 8),
    "Once upon a time",
)
TERMINAL = ("end", "error")
CHECKPOINT_JOBS = 50  # resident memory is compared from here to the end
POLL_S = 0.01
HTTP_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


# -- the worker ---------------------------------------------------------------------------


class RssSampler:
    """Peak resident memory of the worker and its child processes, sampled on a thread."""

    def __init__(self, pid: int | None, every: float = 0.25) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        if pid is not None:
            self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()


def wait_idle(http: httpx.Client, timeout: float = 120) -> None:
    def idle() -> bool:
        h = http.get("/health").json()
        return h["active_job"] is None and h["queue_depth"] == 0

    wait_until(idle, timeout, POLL_S, "worker idle")


def idle_rss(pid: int) -> int:
    """Resident memory once it stops moving: after a job the spare context is
    remade on a helper thread, so the first reading may come before it."""
    readings = [rss_bytes(pid)]

    def settled() -> bool:
        time.sleep(0.1)  # the interval between two readings, not a synchronisation
        readings.append(rss_bytes(pid))
        return abs(readings[-1] - readings[-2]) < (1 << 20)

    try:
        wait_until(settled, 10, POLL_S, "resident memory settled")
    except TimeoutError:
        pass  # report the last reading; the flatness check then judges it
    return readings[-1]


# -- one job --------------------------------------------------------------------------------


@dataclass
class JobRun:
    job_id: str
    scenario: str
    body: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: int | None = None
    disconnected: bool = False  # we closed the stream before its terminal event
    cancel_statuses: list[int] = field(default_factory=list)  # appended by cancel threads
    snapshot: dict[str, Any] | None = None  # GET /jobs/{id} once the job ended
    outcome: str = ""
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, what)

    def problem(self, kind: str, what: str) -> None:
        self.problems.append((kind, what))  # list.append is atomic: cancel threads use it too

    @property
    def cancels_sent(self) -> int:
        return len(self.cancel_statuses)

    @property
    def terminal(self) -> tuple[str, dict[str, Any]] | None:
        ends = [e for e in self.events if e[0] in TERMINAL]
        return ends[0] if ends else None

    @property
    def text(self) -> str:
        return "".join(d["t"] for n, d in self.events if n == "token")

    @property
    def tokens_seen(self) -> int:
        return sum(1 for n, _ in self.events if n == "token")

    @property
    def started(self) -> bool:
        return any(n == "started" for n, _ in self.events)


def stream_problems(run: JobRun) -> list[str]:
    """The stream's shape: [started, token*] then exactly one terminal event, last (WO-JOB-2)."""
    names = [n for n, _ in run.events]
    problems = []
    terminals = [i for i, n in enumerate(names) if n in TERMINAL]
    if run.disconnected:
        if terminals:
            problems.append(f"terminal event on a stream we closed early: {names}")
    elif len(terminals) != 1:
        problems.append(f"{len(terminals)} terminal events: {names}")
    elif terminals[0] != len(names) - 1:
        problems.append(f"events after the terminal event: {names}")
    body = [n for n in names if n not in TERMINAL]
    if body and (body[0] != "started" or set(body[1:]) - {"token"} or body.count("started") != 1):
        problems.append(f"events out of order: {names}")
    indexes = [d.get("i") for n, d in run.events if n == "token"]
    if indexes != list(range(len(indexes))):
        problems.append(f"token indexes not 0..n-1: {indexes}")
    if any(not d.get("t") for n, d in run.events if n == "token"):
        problems.append("empty token text")
    for n, d in run.events:
        if n == "started" and d.get("job_id") != run.job_id:
            problems.append(f"started names job {d.get('job_id')!r}")
    return problems


def ledger_problems(run: JobRun, snap: dict[str, Any]) -> list[str]:
    """GET /jobs/{id} against what the stream said."""
    problems = []

    def expect(name: str, want: Any) -> None:
        if snap.get(name) != want:
            problems.append(f"{name}: stream says {want!r}, GET /jobs says {snap.get(name)!r}")

    expect("job_id", run.job_id)
    terminal = run.terminal
    error = snap.get("error") or {}
    if terminal is not None:
        name, data = terminal
        expect("text", run.text)
        expect("tokens_out", data.get("tokens_out"))
        if name == "end":
            expect("state", "completed")
            expect("stop_reason", data["stop_reason"])
            expect("error", None)
        elif data.get("code") == "CANCELLED":
            expect("state", "cancelled")
            expect("cancel_reason", "client")
            expect("stop_ms", data.get("stop_ms"))
            expect("cancel_ms", data.get("cancel_ms"))
            if error.get("code") != "CANCELLED":
                problems.append(f"error: stream says CANCELLED, GET /jobs says {error!r}")
        else:
            expect("state", "failed")
            if error.get("code") != data.get("code"):
                problems.append(f"error: stream says {data.get('code')}, GET /jobs says {error!r}")
    elif run.disconnected:
        # Either the hang-up cancelled it, or it finished before the worker noticed.
        if snap.get("state") == "cancelled":
            expect("cancel_reason", "disconnect")
            if error.get("code") != "CANCELLED":
                problems.append(f"disconnected job ended with error {error!r}")
        elif snap.get("state") != "completed":
            problems.append(
                f"disconnected job ended {snap.get('state')!r}, not cancelled or completed"
            )
        if not str(snap.get("text", "")).startswith(run.text):
            problems.append("GET /jobs text does not start with the streamed text")
        if (snap.get("tokens_out") or 0) < run.tokens_seen:
            problems.append(
                f"tokens_out {snap.get('tokens_out')} < {run.tokens_seen} tokens streamed"
            )
    return problems


def classify(run: JobRun) -> str:
    terminal = run.terminal
    if run.status != 200:
        return "rejected"
    if terminal is None:
        state = (run.snapshot or {}).get("state")
        return "cancelled_disconnect" if state == "cancelled" else f"{state}_before_disconnect"
    name, data = terminal
    if name == "end":
        return (
            "completed_despite_cancel"
            if run.cancels_sent and run.scenario != "late_cancel"
            else "completed"
        )
    if data.get("code") == "CANCELLED":
        return "cancelled_running" if run.started else "cancelled_queued"
    return f"failed_{data.get('code')}"


class Client:
    """One simulated client: its own connections for the stream and for cancels.

    Streams go through the package's client (worker_orcd.client). Cancels and GET /jobs
    stay plain requests: the soak checks the answers themselves (a cancel's 202 and its
    body, WO-CANCEL-1), where the package's client takes any 2xx.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.stream_http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT, headers=headers)
        self.http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT, headers=headers)
        self.api = WorkerApi(http_client=self.stream_http)

    def close(self) -> None:
        self.stream_http.close()
        self.http.close()

    def cancel(self, run: JobRun) -> None:
        try:
            r = self.http.post("/cancel", json={"job_id": run.job_id})
        except httpx.HTTPError as exc:
            run.cancel_statuses.append(0)
            run.problem("http", f"cancel failed: {exc!r}")
            return
        run.cancel_statuses.append(r.status_code)
        if r.status_code != 202 or r.json() != {"status": "cancelling", "job_id": run.job_id}:
            run.problem("http", f"cancel answered {r.status_code} {r.text[:200]}")

    def cancel_later(self, run: JobRun, delay: float) -> threading.Thread:
        def fire() -> None:
            time.sleep(delay)  # the random cancel timing under test
            self.cancel(run)

        t = threading.Thread(target=fire, daemon=True)
        t.start()
        return t

    @staticmethod
    def body(job_id: str, rng: random.Random) -> dict[str, Any]:
        body: dict[str, Any] = {
            "job_id": job_id,
            "prompt": rng.choice(PROMPTS),
            "max_tokens": rng.randint(1, 40),
            "temperature": rng.choice([0.0, 0.7, 1.0]),
            "seed": rng.randrange(2**32),
        }
        if rng.random() < 0.2:
            body["stop"] = [rng.choice([".", "\n", " the"])]
        return body

    def run(self, job_id: str, rng: random.Random) -> JobRun:
        """One job; `rng` (the job's own) picks its scenario, body and timings."""
        scenario = rng.choice(SCENARIOS)
        run = JobRun(job_id, scenario, self.body(job_id, rng))
        k = rng.randint(0, 8)  # tokens before a cancel or a hang-up
        timers: list[threading.Thread] = []
        body = dict(run.body)
        # Hang-ups must stay hang-ups (WO-CANCEL-7): leaving the stream sends no cancel.
        stream = self.api.stream(body.pop("prompt"), cancel_on_exit=False, **body)
        try:
            try:
                stream.open()
            except WorkerError as exc:
                run.status = exc.status
                run.problem("http", f"execute answered {exc.status} {exc.code}: {exc.message[:200]}")
                return run
            with stream:
                run.status = stream.response.status_code
                if scenario == "cancel_repeat":
                    timers += [
                        self.cancel_later(run, rng.uniform(0.0, 0.2))
                        for _ in range(rng.randint(2, 3))
                    ]
                elif scenario == "cancel_queued":
                    self.cancel(run)
                if scenario == "disconnect" and k == 0:
                    run.disconnected = True
                    return run  # leaving the block closes the connection
                for event in stream.sse_events():  # raw events: the contract's data as sent
                    name = event.name
                    run.events.append((name, event.data))
                    if name == "started" and scenario == "cancel_delay":
                        # Timed from the start of the run, so most of these hit it running.
                        timers.append(self.cancel_later(run, rng.uniform(0.0, 0.3)))
                    if name == "token" and run.tokens_seen == k:
                        if scenario == "cancel_after_tokens":
                            self.cancel(run)
                        elif scenario == "disconnect":
                            run.disconnected = True
                            return run
        except IncompleteStream:
            pass  # no terminal event: stream_problems reports it
        except httpx.HTTPError as exc:
            run.problem("http", f"HTTP error: {exc!r}")
            return run
        finally:
            for t in timers:
                t.join()
        if scenario == "late_cancel":
            self.cancel(run)
            self.cancel(run)
        return run

    def settle(self, run: JobRun, timeout: float) -> None:
        """GET /jobs/{id} once the job has ended; a job still not ended by `timeout` is stuck."""
        if run.status != 200:
            return
        snap: dict[str, Any] = {}

        def ended() -> bool:
            nonlocal snap
            r = self.http.get(f"/jobs/{run.job_id}")
            if r.status_code != 200:
                run.problem("ledger", f"GET /jobs/{run.job_id} answered {r.status_code}")
                return True
            snap = r.json()
            return snap["state"] in ("completed", "cancelled", "failed")

        try:
            wait_until(ended, timeout, POLL_S, f"job {run.job_id} ended")
        except TimeoutError:
            run.problem("stuck", f"still {snap.get('state')!r} {timeout}s after its stream")
            run.outcome = "stuck"
            return
        if snap:
            run.snapshot = snap
            for what in ledger_problems(run, snap):
                run.problem("ledger", what)


# -- the soak -------------------------------------------------------------------------------


@dataclass
class SoakConfig:
    jobs: int = 1000
    clients: int = 4
    seed: int = 1
    url: str | None = None
    pid: int | None = None
    worker_args: list[str] = field(default_factory=list)
    token: str | None = None
    settle_timeout: float = 60.0
    max_rss_growth_mib: float = 32.0


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return {"n": len(v), "p50": pick(0.5), "p99": pick(0.99), "max": v[-1]}


def _requests_by_outcome(http: httpx.Client) -> dict[str, float] | None:
    r = http.get("/metrics")
    if r.status_code != 200:
        return None
    counts = {}
    for line in r.text.splitlines():
        if line.startswith('worker_requests_total{outcome="'):
            label, value = line.split("}", 1)
            counts[label.split('"')[1]] = float(value)
    return counts


def run_soak(cfg: SoakConfig) -> dict[str, Any]:
    # A worker of our own: a fresh ledger, and no other clients to blur the counts.
    own = None if cfg.url else worker_server(None, cfg.worker_args, scratch_dir(), worker_id="soak").start()
    url = cfg.url or own.url
    pid = cfg.pid if cfg.url else own.pid
    headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {}
    http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT, headers=headers)
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    runs: list[JobRun] = []
    runs_lock = threading.Lock()
    failures: list[str] = []
    sampler = RssSampler(pid)
    try:
        wait_idle(http)
        rss_start = idle_rss(pid) if pid else None
        metrics_before = _requests_by_outcome(http)
        clients = [Client(url, headers) for _ in range(cfg.clients)]
        t0 = time.perf_counter()

        def phase(first: int, last: int) -> None:
            next_index = iter(range(first, last))
            take = threading.Lock()

            def client_loop(client: Client) -> None:
                try:
                    while True:
                        with take:
                            i = next(next_index, None)
                        if i is None:
                            return
                        # Seeded per job, not per client: the same seed gives the
                        # same jobs whichever client happens to take them.
                        run = client.run(f"{prefix}-{i:05d}", random.Random(f"{cfg.seed}:{i}"))
                        for what in stream_problems(run):
                            run.problem("terminal", what)
                        client.settle(run, cfg.settle_timeout)
                        run.outcome = run.outcome or classify(run)
                        with runs_lock:
                            runs.append(run)
                except Exception as exc:  # a bug in the soak itself: report, do not hang
                    failures.append(f"client crashed: {exc!r}")

            threads = [threading.Thread(target=client_loop, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        checkpoint = min(CHECKPOINT_JOBS, cfg.jobs)
        phase(0, checkpoint)
        wait_idle(http)
        rss_checkpoint = idle_rss(pid) if pid else None
        phase(checkpoint, cfg.jobs)
        wall_s = time.perf_counter() - t0
        for c in clients:
            c.close()

        wait_idle(http)
        rss_end = idle_rss(pid) if pid else None
        sampler.stop()
        # With slots, the shared KV cache must be empty once nothing runs (WO-SLOT-3).
        idle_health = http.get("/health").json()
        kv_cells_end = idle_health.get("kv_cells")

        # Every job again, most now from the ledger: it must still say what the stream said.
        final_mismatches = 0
        for run in runs:
            if run.snapshot is None:
                continue
            r = http.get(f"/jobs/{run.job_id}")
            again = r.json() if r.status_code == 200 else {}
            drift = [
                k
                for k in (
                    "state",
                    "tokens_out",
                    "text",
                    "stop_reason",
                    "error",
                    "cancel_reason",
                    "stop_ms",
                    "cancel_ms",
                )
                if again.get(k) != run.snapshot.get(k)
            ]
            if drift:
                final_mismatches += 1
                run.problem("final_ledger", f"a later GET /jobs differs in {drift}")

        # Nothing left queued or running, by the ledger's own listing.
        left = []
        for state in ("queued", "running"):
            r = http.get("/jobs", params={"state": state, "limit": 1000})
            if r.status_code == 200:
                left += [
                    (state, j["job_id"]) for j in r.json()["jobs"] if j["job_id"].startswith(prefix)
                ]
        metrics_after = _requests_by_outcome(http)
    finally:
        sampler.stop()
        http.close()
        exit_status = own.stop(timeout=60) if own else None

    by_outcome = Counter(r.outcome for r in runs)
    metrics_delta = None
    metrics_problem = None
    if metrics_before is not None and metrics_after is not None:
        metrics_delta = {
            k: metrics_after.get(k, 0) - metrics_before.get(k, 0) for k in metrics_after
        }
        states = Counter((r.snapshot or {}).get("state") for r in runs)
        want = {
            "completed": states["completed"],
            "cancelled": states["cancelled"],
            "failed": states["failed"],
            "rejected": 0,
        }
        if own is not None and {k: metrics_delta.get(k, 0) for k in want} != want:
            # Only a worker of our own has no other clients to blur the counts.
            metrics_problem = f"worker_requests_total moved by {metrics_delta}, jobs ended {want}"

    running_cancels = [
        d
        for r in runs
        if r.started
        for n, d in r.events
        if n == "error" and d.get("code") == "CANCELLED"
    ]
    growth_mib = None if rss_checkpoint is None else (rss_end - rss_checkpoint) / 2**20

    def runs_with(kind: str) -> int:
        return sum(any(k == kind for k, _ in r.problems) for r in runs)

    violations = {
        "terminal_events": runs_with("terminal"),
        "ledger_mismatches": runs_with("ledger"),
        "final_ledger_mismatches": final_mismatches,
        "stuck_jobs": runs_with("stuck") + len(left),
        "http_errors": runs_with("http"),
        "unexpected_failures": sum(1 for r in runs if r.outcome.startswith(("failed", "rejected"))),
        "missing_jobs": cfg.jobs - len(runs),
        "soak_errors": len(failures),
        "metrics_disagree": int(metrics_problem is not None),
        "memory_growth": int(growth_mib is not None and growth_mib > cfg.max_rss_growth_mib),
        "worker_exit_status": int(exit_status not in (None, 0)),
        "kv_cells_left": int(kv_cells_end not in (None, 0)),
    }
    ok = not any(violations.values())
    if own is not None:
        if ok:
            shutil.rmtree(own.scratch, ignore_errors=True)
        else:
            failures.append(f"the worker's log and ledger are kept in {own.scratch}")
    mib = lambda b: None if b is None else round(b / 2**20, 1)  # noqa: E731
    return {
        "jobs": cfg.jobs,
        "clients": cfg.clients,
        "seed": cfg.seed,
        "worker": "own" if own else url,
        "worker_args": cfg.worker_args if own else None,
        "wall_s": round(wall_s, 1),
        "jobs_per_s": round(len(runs) / wall_s, 2) if wall_s else None,
        "scenarios": dict(Counter(r.scenario for r in runs)),
        "outcomes": dict(sorted(by_outcome.items())),
        "cancel_requests_sent": sum(r.cancels_sent for r in runs),
        "tokens_streamed": sum(r.tokens_seen for r in runs),
        "parallel": idle_health.get("parallel"),
        "batch": idle_health.get("batch"),  # the step size the engine chose at start, with slots
        "kv_cells_at_end": kv_cells_end,
        "violations": violations,
        "ok": ok,
        "rss_mib": {
            "idle_start": mib(rss_start),
            f"idle_after_{CHECKPOINT_JOBS}_jobs": mib(rss_checkpoint),
            "idle_end": mib(rss_end),
            "peak": mib(sampler.peak or None),
            "growth_since_checkpoint": None if growth_mib is None else round(growth_mib, 1),
            "allowed_growth": cfg.max_rss_growth_mib,
        },
        "cancelled_while_running_ms": {
            "stop_ms": _percentiles([d["stop_ms"] for d in running_cancels]),
            "cancel_ms": _percentiles([d["cancel_ms"] for d in running_cancels]),
        },
        "metrics_requests_delta": metrics_delta,
        "problems": ([metrics_problem] if metrics_problem else [])
        + failures
        + [f"{r.job_id} [{r.scenario}] {kind}: {what}" for r in runs for kind, what in r.problems][
            :50
        ]
        + [f"left {state}: {job_id}" for state, job_id in left],
    }


def print_summary(s: dict[str, Any], out=sys.stdout) -> None:
    w = lambda *a: print(*a, file=out)  # noqa: E731
    w(
        f"soak: {s['jobs']} jobs, {s['clients']} clients, seed {s['seed']}, worker {s['worker']}"
        + (f" {' '.join(s['worker_args'])}" if s.get("worker_args") else "")
    )
    w(
        f"wall time        {s['wall_s']} s ({s['jobs_per_s']} jobs/s), "
        f"{s['tokens_streamed']} tokens streamed, {s['cancel_requests_sent']} cancel requests"
    )
    w("scenarios        " + ", ".join(f"{k} {v}" for k, v in sorted(s["scenarios"].items())))
    w("outcomes         " + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()))
    r = s["rss_mib"]
    w(
        f"resident MiB     idle at start {r['idle_start']}, after {CHECKPOINT_JOBS} jobs "
        f"{r[f'idle_after_{CHECKPOINT_JOBS}_jobs']}, at the end {r['idle_end']} "
        f"(growth {r['growth_since_checkpoint']}, allowed {r['allowed_growth']}); peak {r['peak']}"
    )
    if s.get("parallel"):
        w(f"slots            {s['parallel']}; KV cells in use at the end {s['kv_cells_at_end']}")
    c = s["cancelled_while_running_ms"]
    w(
        f"cancel latency   stop_ms p50 {c['stop_ms']['p50']} p99 {c['stop_ms']['p99']} "
        f"max {c['stop_ms']['max']}; cancel_ms p50 {c['cancel_ms']['p50']} "
        f"p99 {c['cancel_ms']['p99']} max {c['cancel_ms']['max']} (n={c['stop_ms']['n']})"
    )
    if s["metrics_requests_delta"] is not None:
        w(
            "metrics          worker_requests_total moved "
            + ", ".join(f"{k} +{v:g}" for k, v in sorted(s["metrics_requests_delta"].items()))
        )
    w("violations       " + ", ".join(f"{k} {v}" for k, v in s["violations"].items()))
    for p in s["problems"]:
        w(f"  {p}")
    w("OK" if s["ok"] else "FAILED")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seed", type=int, default=1, help="picks scenarios, bodies and timings")
    p.add_argument("--url", help="a running worker (default: start one)")
    p.add_argument(
        "--pid", type=int, help="with --url: the worker's pid, to read its resident memory"
    )
    p.add_argument("--token", help="bearer token, when the worker has API keys")
    p.add_argument(
        "--worker-args", default="", help="extra `serve` flags for the worker this starts"
    )
    p.add_argument("--max-rss-growth-mib", type=float, default=32.0)
    p.add_argument("--json", type=Path, help="also write the summary here")
    a = p.parse_args(argv)
    cfg = SoakConfig(
        jobs=a.jobs,
        clients=a.clients,
        seed=a.seed,
        url=a.url.rstrip("/") if a.url else None,
        pid=a.pid,
        worker_args=shlex.split(a.worker_args),
        token=a.token,
        max_rss_growth_mib=a.max_rss_growth_mib,
    )
    summary = run_soak(cfg)
    print_summary(summary)
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
