"""The front under load: half-sent requests and stalled readers beside normal traffic.

    python -m bench.front_load [--half-open 500] [--stalled-gets 100] [--stalled-streams 4]
        [--burst 48] [--read-timeout-sec 5] [--stall-timeout-sec 5] [--max-connections 512]
        [--threads 1] [--seed 1] [--json PATH]

It starts a worker of its own on loopback and measures, first on the idle worker,
then under load, GET /health and POST /cancel one after the other on one pooled
connection (the orchestrator's), each one's latency. The load, all at once:

- a flood of `--half-open` connections, each sending half a request header and then
  nothing; each one the worker closes is replaced at once, for as long as the load lasts;
- `--stalled-gets` connections that ask for GET /openapi.json and read nothing, and
  `--stalled-streams` streamed chat completions nobody reads (receive buffers of 4 KiB);
- a burst of `--burst` concurrent executes, each on a connection of its own, some of
  them (`--cancel-share`) cancelled at a random moment.

Checked, each failure counted as a violation (exit status 1 if any):

- every half-open connection is closed by the worker, answered (408 `REQUEST_TIMEOUT`
  when its read deadline passed, 503 `WORKER_BUSY` when it made room for a newcomer at
  the cap), within its deadline (`--slack-sec` allowed for timers), and no 408 before it;
- every stalled reader is cut by the worker (a reset, or its whole answer then the end),
  a stalled GET within two stall bounds (the first may still see the buffers fill),
  every stalled stream's job ended (cancelled with reason `disconnect`, or completed if
  it ended before its writes stalled);
- every accepted burst stream has exactly one terminal event, last, matching its record
  in GET /jobs/{id}; every refusal is a plain HTTP error (specs/contract.md) with Retry-After;
- every probe answered (a probe whose pooled connection was closed under it is sent
  again once, as any client would, and counted);
- at the end the worker is healthy and idle, and holds no more file descriptors than
  when idle (plus `FD_SLACK`).

Prints a summary (and writes it as JSON with --json); exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shlex
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness.machine import describe
from bench.harness.processes import worker_server
from bench.harness.prompts import story
from bench.harness.report import write_json
from bench.harness.stats import summary
from testkit.processes import scratch_dir
from worker_orcd.client.sse import iter_events

SCHEMA = "worker-orcd-front-load/1"
HALF_HEADER = b"POST /execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Len"
STALLED_RCVBUF = 4096
STALLED_STREAM_TOKENS = 2048  # far more than the buffers hold: its writes stall long before its end
FD_SLACK = 16
POLL_MS = 10
WATCHED = select.POLLRDHUP | select.POLLHUP | select.POLLERR  # a FIN or a reset, without reading
HTTP_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


@dataclass
class FrontLoadConfig:
    half_open: int = 500
    stalled_gets: int = 100
    stalled_streams: int = 4
    burst: int = 48
    cancel_share: float = 0.5
    cancel_window_sec: float = 3.0  # a burst job's cancel comes this long after its request at most
    max_tokens: int = 16
    read_timeout_sec: float = 5.0
    stall_timeout_sec: float = 5.0
    max_connections: int = 512
    max_queue: int = 16
    threads: int = 1
    idle_probes: int = 100
    probe_every_sec: float = 0.02
    slack_sec: float = 1.0
    seed: int = 1
    worker_args: list[str] = field(default_factory=list)


# -- raw connections the worker must end ---------------------------------------------------


@dataclass
class Raw:
    kind: str  # half_open | stalled_get | stalled_stream
    sock: socket.socket
    opened: float  # before connect
    job_id: str | None = None
    received: bytes = b""
    answered: float | None = None  # a stalled one: when its answer's first bytes came (unread)
    ended: float | None = None
    how: str | None = None  # eof | reset

    @property
    def status(self) -> int | None:
        head = self.received.split(b"\r\n", 1)[0].split()
        return int(head[1]) if len(head) > 1 and head[1].isdigit() else None

    def body(self) -> Any:
        try:
            return json.loads(self.received.partition(b"\r\n\r\n")[2])
        except ValueError:
            return None


def open_raw(port: int, kind: str, data: bytes, *, rcvbuf: int | None = None, job_id: str | None = None) -> Raw:
    opened = time.perf_counter()
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(data)
    s.setblocking(False)
    return Raw(kind, s, opened, job_id)


def request_bytes(method: str, path: str, body: dict | None = None, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(data)}"]
    lines += ["Content-Type: application/json"] * (body is not None)
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class Watch:
    """Watches raw connections on one thread: half-open ones are read to their end and
    replaced while the flood lasts; stalled ones are never read, only watched for their
    answer's first bytes and for the worker's FIN or reset."""

    def __init__(self, port: int, half_open: int) -> None:
        self.port = port
        self.target = half_open
        self.flooding = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.open: dict[int, Raw] = {}
        self.done: list[Raw] = []
        self.errors: list[str] = []
        self._poll = select.poll()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, raw: Raw) -> None:
        with self.lock:
            self.open[raw.sock.fileno()] = raw
            self._poll.register(raw.sock, select.POLLIN | WATCHED)

    def start(self) -> None:
        self.flooding.set()
        for _ in range(self.target):
            self.add(open_raw(self.port, "half_open", HALF_HEADER))
        self._thread.start()

    def half_open_count(self) -> int:
        with self.lock:
            return sum(r.kind == "half_open" for r in self.open.values())

    def still_open(self, kind: str) -> list[Raw]:
        with self.lock:
            return [r for r in self.open.values() if r.kind == kind]

    def halt(self) -> None:
        """Stops watching; what is still open stays open."""
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def close_all(self) -> None:
        self.halt()
        with self.lock:
            for raw in self.open.values():
                raw.sock.close()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                for fd, events in self._poll.poll(POLL_MS):
                    with self.lock:
                        raw = self.open.get(fd)
                    if raw is not None:
                        self._event(raw, events)
        except Exception as exc:  # a bug here must fail the run, not hang it
            self.errors.append(repr(exc))

    def _event(self, raw: Raw, events: int) -> None:
        if raw.kind == "half_open":
            try:
                while chunk := raw.sock.recv(65536):
                    raw.received += chunk
            except BlockingIOError:
                return  # more to come
            except ConnectionError:
                raw.how = "reset"
            else:
                raw.how = "eof"
        elif not events & WATCHED:  # its answer has begun: noted, left unread
            raw.answered = time.perf_counter()
            self._poll.modify(raw.sock, WATCHED)
            return
        else:
            raw.how = "reset" if events & (select.POLLERR | select.POLLHUP) else "eof"
        self._ended(raw)
        if raw.kind == "half_open" and self.flooding.is_set():
            self.add(open_raw(self.port, "half_open", HALF_HEADER))

    def _ended(self, raw: Raw) -> None:
        raw.ended = time.perf_counter()
        with self.lock:
            self.open.pop(raw.sock.fileno(), None)
            self._poll.unregister(raw.sock)
            self.done.append(raw)
        raw.sock.close()


def drain(raw: Raw, timeout: float) -> bool:
    """Reads what a stalled connection holds: True once the worker's end (EOF or reset) comes."""
    raw.sock.setblocking(True)
    raw.sock.settimeout(timeout)
    try:
        while raw.sock.recv(65536):
            pass
    except ConnectionError:
        return True
    except OSError:  # the timeout: still open
        return False
    return True


# -- the orchestrator's probes -------------------------------------------------------------


class Probes:
    """GET /health then POST /cancel, over and over, on one pooled connection."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT)
        self.ms: dict[str, list[float]] = {"health": [], "cancel": []}
        self.retries = 0
        self.failures: list[str] = []
        self.n = 0

    def once(self) -> None:
        self.n += 1
        self._timed("health", lambda: self.http.get("/health"), 200)
        self._timed("cancel", lambda: self.http.post("/cancel", json={"job_id": f"probe-{self.n}"}), 202)

    def _timed(self, name: str, call, want: int) -> None:
        t = time.perf_counter()
        for attempt in (1, 2):
            try:
                status = call().status_code
                break
            except httpx.TransportError as exc:  # its connection closed under it
                if attempt == 2:
                    self.failures.append(f"{name}: {exc!r}")
                    return
                self.retries += 1
        self.ms[name].append((time.perf_counter() - t) * 1000)
        if status != want:
            self.failures.append(f"{name} answered {status}")

    def run_until(self, stop: threading.Event, every: float) -> threading.Thread:
        def loop() -> None:
            while not stop.is_set():
                self.once()
                stop.wait(every)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def figures(self) -> dict[str, Any]:
        return {
            "health_ms": summary(self.ms["health"]),
            "cancel_ms": summary(self.ms["cancel"]),
            "retries": self.retries,
            "failures": len(self.failures),
        }


# -- the burst of executes -----------------------------------------------------------------


def burst_job(
    url: str, job_id: str, prompt: str, max_tokens: int, cancel_after: float | None, result: dict[str, Any]
) -> None:
    """Into `result` as it goes: what a client that fails part-way had is kept."""
    result["cancel_after"] = cancel_after
    body = {"job_id": job_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as http:
        canceller = None
        if cancel_after is not None:

            def cancel() -> None:
                with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as c:
                    try:
                        result["cancel_status"] = c.post("/cancel", json={"job_id": job_id}).status_code
                    except Exception as exc:
                        result["problems"].append(f"client at cancel: {exc!r}")

            canceller = threading.Timer(cancel_after, cancel)
            canceller.start()
        result["stage"] = "execute"
        with http.stream("POST", "/execute", json=body) as r:
            result["status"] = r.status_code
            if r.status_code != 200:
                r.read()
                result["refusal"] = refusal_problems(r, result["problems"])
            else:
                result["events"] = [(e.name, e.data) for e in iter_events(r.iter_bytes())]
        if canceller is not None:
            canceller.join()
        result["stage"] = "record"
        if result["status"] == 200:
            result["record"] = http.get(f"/jobs/{job_id}").json()


def refusal_problems(r: httpx.Response, problems: list[str]) -> str | None:
    try:
        error = r.json()["error"]
        code = error["code"]
        if not (error.get("message") and error.get("correlation_id") == r.headers.get("x-correlation-id")):
            problems.append(f"refusal {r.status_code} not in the plain HTTP errors' shape: {error}")
    except (ValueError, KeyError, TypeError):
        problems.append(f"refusal {r.status_code} is not a JSON error: {r.text[:200]!r}")
        return None
    if r.status_code in (429, 503) and not r.headers.get("retry-after"):
        problems.append(f"refusal {r.status_code} {code} without Retry-After")
    if "--max-connections" in error.get("message", ""):
        return f"{code} (connection cap)"
    return code


def stream_problems(result: dict[str, Any]) -> list[str]:
    events = result["events"]
    ends = [i for i, (name, _) in enumerate(events) if name in ("end", "error")]
    if len(ends) != 1 or ends[0] != len(events) - 1:
        return [f"{len(ends)} terminal events, last at {ends[-1] if ends else None} of {len(events)}"]
    name, data = events[-1]
    record = result["record"]
    want = "completed" if name == "end" else ("cancelled" if data["code"] == "CANCELLED" else "failed")
    problems = []
    if record.get("state") != want:
        problems.append(f"stream ended {name} {data.get('code')}, GET /jobs says {record.get('state')}")
    if record.get("tokens_out") != data.get("tokens_out"):
        problems.append(f"tokens_out {data.get('tokens_out')} on the stream, {record.get('tokens_out')} recorded")
    return problems


def run_burst(url: str, cfg: FrontLoadConfig, rng: random.Random) -> list[dict[str, Any]]:
    plans = [
        (f"burst-{cfg.seed}-{i:03d}", rng.uniform(0, cfg.cancel_window_sec) if rng.random() < cfg.cancel_share else None)
        for i in range(cfg.burst)
    ]
    results: list[dict[str, Any]] = [{} for _ in plans]
    start = threading.Barrier(len(plans))

    def one(i: int) -> None:
        job_id, cancel_after = plans[i]
        start.wait()
        result = results[i] = {"job_id": job_id, "problems": []}
        try:
            burst_job(url, job_id, story(i), cfg.max_tokens, cancel_after, result)
        except Exception as exc:
            result["problems"].append(f"client at {result.get('stage')}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- the run --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


TERMINAL_STATES = ("completed", "cancelled", "failed")


def job_end(http: httpx.Client, job_id: str, timeout: float) -> dict[str, Any] | None:
    """The job's record once it has ended; None if it has not within `timeout`."""
    record: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal record
        record = http.get(f"/jobs/{job_id}").json()
        return record.get("state") in TERMINAL_STATES

    return record if wait_for(ended, timeout) else None


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_MS / 1000)
    return True


def worker_args(cfg: FrontLoadConfig) -> list[str]:
    return [
        "--threads", str(cfg.threads),
        "--max-queue", str(cfg.max_queue),
        "--read-timeout-sec", str(cfg.read_timeout_sec),
        "--stall-timeout-sec", str(cfg.stall_timeout_sec),
        "--max-connections", str(cfg.max_connections),
        *cfg.worker_args,
    ]  # fmt: skip


def run_front_load(cfg: FrontLoadConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    server = worker_server(None, worker_args(cfg), scratch_dir(), worker_id="front-load").start()
    violations: Counter[str] = Counter()
    notes: list[str] = []
    watch = Watch(server.port, cfg.half_open)
    checks = httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT)  # the run's own look-ups
    try:
        probes = Probes(server.url)
        health = checks.get("/health").json()
        for _ in range(cfg.idle_probes):
            probes.once()
        idle = probes.figures()
        fds_idle = open_fds(server.pid)
        probes.ms = {"health": [], "cancel": []}
        probes.retries = 0

        started = time.perf_counter()
        cpu_before = cpu_seconds(server.pid)
        watch.start()
        model = health["model"]
        stalled_ids = [f"stalled-{cfg.seed}-{i:03d}" for i in range(cfg.stalled_streams)]
        for i, job_id in enumerate(stalled_ids):
            body = {
                "model": model, "stream": True, "temperature": 0, "max_tokens": STALLED_STREAM_TOKENS,
                "messages": [{"role": "user", "content": f"{i}. Write a long, detailed story about a dragon who learns to bake bread."}],
            }  # fmt: skip
            data = request_bytes("POST", "/v1/chat/completions", body, {"X-Request-Id": job_id})
            watch.add(open_raw(server.port, "stalled_stream", data, rcvbuf=STALLED_RCVBUF, job_id=job_id))
        for _ in range(cfg.stalled_gets):
            watch.add(open_raw(server.port, "stalled_get", request_bytes("GET", "/openapi.json"), rcvbuf=STALLED_RCVBUF))
        stop_probes = threading.Event()
        probe_thread = probes.run_until(stop_probes, cfg.probe_every_sec)
        fds_loaded = open_fds(server.pid)

        burst = run_burst(server.url, cfg, rng)
        # The stalled streams' jobs were queued before the burst's: each has run or runs now.
        stalled_jobs = {}
        for job_id in stalled_ids:
            record = job_end(checks, job_id, cfg.stall_timeout_sec + 60)
            if record is None:
                violations["stalled_stream_job_not_ended"] += 1
            else:
                stalled_jobs[job_id] = record
        watch.flooding.clear()
        load_sec = time.perf_counter() - started
        cpu_after = cpu_seconds(server.pid)
        stop_probes.set()
        probe_thread.join(30)
        under_load = probes.figures()

        # The flood's last connections: each is closed within its deadline.
        if not wait_for(lambda: watch.half_open_count() == 0, cfg.read_timeout_sec + cfg.slack_sec * 2):
            violations["half_open_left_open"] += watch.half_open_count()
        # Stalled readers: cut after their bound; those whose whole answer went out end after it.
        wait_for(lambda: not watch.still_open("stalled_get"), cfg.stall_timeout_sec + cfg.slack_sec * 2)
        watch.halt()
        for raw in watch.still_open("stalled_get") + watch.still_open("stalled_stream"):
            if drain(raw, cfg.stall_timeout_sec + cfg.slack_sec + 10):
                raw.how = "drained"  # its whole answer went out before the end
            else:
                violations[f"{raw.kind}_left_open"] += 1
        stalled_streams = [r for r in [*watch.done, *watch.open.values()] if r.kind == "stalled_stream"]
        watch.close_all()
        violations["watch_errors"] += len(watch.errors)
        notes += watch.errors

        half = [r for r in watch.done if r.kind == "half_open"]
        half_open = half_open_figures(half, cfg, violations)
        stalled_gets = [r for r in watch.done if r.kind == "stalled_get"]
        # From its answer's first bytes: its writes stall at once (the document is larger than
        # the buffers); the first bound may still see the buffers fill, so it is cut within two.
        resets = [r.ended - (r.answered or r.opened) for r in stalled_gets if r.how == "reset"]
        violations["stalled_get_cut_late"] += sum(t > 2 * cfg.stall_timeout_sec + cfg.slack_sec for t in resets)
        for record in stalled_jobs.values():
            ended_as = record.get("state"), record.get("cancel_reason")
            if ended_as not in (("cancelled", "disconnect"), ("completed", None)):
                violations["stalled_stream_ended_otherwise"] += 1
                notes.append(f"stalled stream {record.get('job_id')} ended {ended_as}")

        burst_figures = burst_summary(burst, violations, notes)
        violations["probe_failures"] += under_load["failures"] + idle["failures"]
        notes += probes.failures

        wait_for(lambda: (h := checks.get("/health").json())["queue_depth"] == 0 and h["active_job"] is None, 60)
        end_health = checks.get("/health").json()
        if end_health["status"] != "healthy":
            violations["unhealthy_at_end"] += 1
        # What the worker holds once every connection is gone: back to where it was.
        wait_for(lambda: (open_fds(server.pid) or 0) <= (fds_idle or 0) + FD_SLACK, 10)
        fds_end = open_fds(server.pid)
        if fds_idle is not None and fds_end is not None and fds_end > fds_idle + FD_SLACK:
            violations["fds_not_released"] += 1
        probes.http.close()
    finally:
        watch.close_all()
        checks.close()
        server.stop()

    return {
        "schema": SCHEMA,
        "machine": describe(None, health.get("cpu_extra_buffers")),
        "settings": asdict(cfg),
        "load_sec": round(load_sec, 2),
        # The front process alone (HTTP, jobs): the engine is a process of its own.
        "front_cpu_sec": None if cpu_before is None or cpu_after is None else round(cpu_after - cpu_before, 2),
        "idle": idle,
        "under_load": under_load,
        "half_open": half_open,
        "stalled_gets": {
            "opened": cfg.stalled_gets,
            "reset": len(resets),
            "reset_after_answer_s": summary(resets),
            "ended_otherwise": len(stalled_gets) - len(resets),
        },
        "stalled_streams": {
            "opened": cfg.stalled_streams,
            "connection_ended": Counter(r.how for r in stalled_streams),
            "jobs": Counter(f"{r.get('state')}/{r.get('cancel_reason')}" for r in stalled_jobs.values()),
            "tokens_out": [r.get("tokens_out") for r in stalled_jobs.values()],
        },
        "burst": burst_figures,
        "worker_fds": {"idle": fds_idle, "loaded": fds_loaded, "end": fds_end},
        "violations": {k: violations[k] for k in sorted(violations)},
        "notes": notes[:50],
    }


def half_open_figures(half: list[Raw], cfg: FrontLoadConfig, violations: Counter[str]) -> dict[str, Any]:
    answers: Counter[str] = Counter()
    closed_after = []
    for raw in half:
        after = raw.ended - raw.opened
        closed_after.append(after)
        body = raw.body()
        code = body["error"]["code"] if isinstance(body, dict) and "error" in body else None
        answers[f"{raw.status} {code}" if raw.status else "nothing"] += 1
        if raw.status is None:
            violations["half_open_closed_unanswered"] += 1
        elif (raw.status, code) not in ((408, "REQUEST_TIMEOUT"), (503, "WORKER_BUSY")):
            violations["half_open_answered_otherwise"] += 1
        if after > cfg.read_timeout_sec + cfg.slack_sec:
            violations["half_open_closed_late"] += 1
        if raw.status == 408 and after < cfg.read_timeout_sec * 0.9:
            violations["half_open_timed_out_early"] += 1
    return {"opened": len(half), "answers": dict(answers), "closed_after_s": summary(closed_after)}


def burst_summary(burst: list[dict[str, Any]], violations: Counter[str], notes: list[str]) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    for result in burst:
        problems = list(result.get("problems", []))
        if result.get("status") == 200 and "record" in result:
            problems += stream_problems(result)
            name, data = result["events"][-1] if result["events"] else ("none", {})
            outcomes[name if name == "end" else f"{name} {data.get('code')}"] += 1
        elif "status" in result:
            refusals[f"{result['status']} {result.get('refusal')}"] += 1
        violations["burst_problems"] += len(problems)
        notes += [f"{result['job_id']}: {p}" for p in problems]
    return {
        "sent": len(burst),
        "accepted": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "refusals": dict(refusals),
        "cancels_sent": sum(r.get("cancel_after") is not None for r in burst),
    }


def print_summary(report: dict[str, Any]) -> None:
    idle, load = report["idle"], report["under_load"]
    print(f"front load on {report['machine']['cpu']}, {report['machine']['cores']} cores; load {report['load_sec']} s, "
          f"front CPU {report['front_cpu_sec']} s")  # fmt: skip
    for name in ("health_ms", "cancel_ms"):
        print(f"  {name[:-3]:7} p50/p99 ms: idle {idle[name]['p50']}/{idle[name]['p99']}, "
              f"under load {load[name]['p50']}/{load[name]['p99']} (n {load[name]['n']})")  # fmt: skip
    half = report["half_open"]
    print(f"  half-open: {half['opened']} closed by the worker, {half['answers']}, after p50/max "
          f"{half['closed_after_s']['p50']}/{half['closed_after_s']['max']} s")  # fmt: skip
    cut = report["stalled_gets"]["reset_after_answer_s"]
    print(f"  stalled GETs: {report['stalled_gets']['reset']} reset, after their answer began p50/max "
          f"{cut['p50']}/{cut['max']} s; "
          f"stalled streams: {dict(report['stalled_streams']['jobs'])}")  # fmt: skip
    b = report["burst"]
    print(f"  burst: {b['accepted']}/{b['sent']} accepted {b['outcomes']}, refused {b['refusals']}")
    print(f"  worker fds idle/loaded/end: {report['worker_fds']}; probe retries {load['retries']}")
    bad = {k: v for k, v in report["violations"].items() if v}
    print(f"  violations: {bad or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.front_load", description=__doc__.split("\n\n")[0])
    defaults = FrontLoadConfig()
    for name in ("half_open", "stalled_gets", "stalled_streams", "burst", "max_tokens", "max_connections", "max_queue", "threads", "idle_probes", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("cancel_share", "read_timeout_sec", "stall_timeout_sec", "slack_sec", "probe_every_sec"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    parser.add_argument("--worker-arg", action="append", default=[], help="a flag for worker-orcd serve; repeatable")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = vars(parser.parse_args(argv))
    path = args.pop("json")
    args["worker_args"] = args.pop("worker_arg")
    report = run_front_load(FrontLoadConfig(**args))
    report["command"] = shlex.join(["python", "-m", "bench.front_load", *(sys.argv[1:] if argv is None else argv)])
    if path:
        write_json(report, path)
    print_summary(report)
    return 1 if any(report["violations"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
