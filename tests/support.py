"""Starting the real worker and talking SSE to it, for the end-to-end tests.

No sleeps as synchronisation: everything waits on a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
from httpx_sse import EventSource

from bench.harness.processes import free_port
from bench.harness.rss import rss_bytes

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
LONG_ANSWER_PROMPT = CHAT.format("Write a long, detailed story about a dragon who learns to bake bread.")
# ~1,400 tokens: evaluating it takes seconds on 2 CPU cores.
LONG_PROMPT = "Hello there, " * 466 + "tell me a story."


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


class LogTail:
    """Collects the worker's JSON log lines from its stderr on a thread."""

    def __init__(self, stream) -> None:
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in iter(stream.readline, ""):
            with self._cond:
                self.raw.append(raw.rstrip("\n"))
                try:
                    self.lines.append(json.loads(raw))
                except ValueError:
                    pass
                self._cond.notify_all()

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [
                line
                for line in self.lines
                if line.get("event") == event and all(line.get(k) == v for k, v in match.items())
            ]

    def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    line
                    for line in self.lines
                    if line.get("event") == event and all(line.get(k) == v for k, v in match.items())
                ]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log line {event} {match} within {timeout}s")
                self._cond.wait(left)


@dataclass
class WorkerProcess:
    """The real worker, started as `python -m worker_orcd serve` on a free port."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    worker_id: str | None = "test-worker"  # None: the worker's own default (named after the port)
    state_dir: Path | None = None
    proc: subprocess.Popen | None = None
    log: LogTail | None = None

    def start(self, timeout: float = 60.0) -> "WorkerProcess":
        self.port = self.port or free_port()
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="worker-orcd-state-"))
        cmd = [
            sys.executable,
            "-m",
            "worker_orcd",
            "serve",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            *(["--worker-id", self.worker_id] if self.worker_id else []),
            *self.args,
        ]
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        self.log = LogTail(self.proc.stderr)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n" + "\n".join(self.log.raw))
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("worker did not become healthy:\n" + "\n".join(self.log.raw))
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def rss_bytes(self) -> int:
        """Resident memory of the worker and its child processes."""
        assert self.proc is not None
        return rss_bytes(self.proc.pid)

    def settled_rss(self) -> int:
        """Resident memory once it stops moving (the engine makes its spare context on a
        helper thread, after the job that used the last one may already have ended)."""
        readings: list[int] = []

        def steady() -> int | None:
            readings.append(self.rss_bytes())
            recent = readings[-20:]
            if len(recent) == 20 and max(recent) - min(recent) < (1 << 20):
                return recent[-1]
            return None

        return wait_until(steady, timeout=30, interval=0.025)


@dataclass(frozen=True, slots=True)
class WireEvent:
    """One event as the wire carried it: `name`, `raw` (its data), `data` (that data as
    JSON) and `at` (time.perf_counter() when it was parsed)."""

    name: str
    raw: str
    at: float

    @property
    def data(self) -> Any:
        return json.loads(self.raw)


def iter_events(response: httpx.Response) -> Iterator[WireEvent]:
    """A streamed response's events as they arrive, keep-alive comments skipped.

    Parsed by httpx-sse, not by the package's own reader (worker_orcd.client), which
    stops at the first terminal event: what the tests check is what the wire carried.
    """
    for event in EventSource(response).iter_sse():
        yield WireEvent(event.event, event.data, time.perf_counter())


def read_events(response: httpx.Response) -> list[WireEvent]:
    """Every event of a streamed response, read to the end of the connection: a second
    terminal event, or anything after the first, is in the list for the test to see."""
    return list(iter_events(response))


def execute(client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> list[WireEvent]:
    """POST /execute and read the stream to the end of the connection."""
    with client.stream("POST", "/execute", json=body, **kwargs) as response:
        assert response.status_code == 200, response.read()
        return read_events(response)


def text_of(events: list[WireEvent]) -> str:
    return "".join(e.data["t"] for e in events if e.name == "token")
