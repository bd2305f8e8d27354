"""The real worker, started as `python -m worker_orcd serve` on a free port, its JSON log
lines read from its stderr on a thread."""

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
from typing import Any

import httpx

from testkit.processes import free_port
from testkit.rss import rss_bytes
from testkit.waiting import wait_until


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
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
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
