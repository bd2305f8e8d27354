"""A real local Ray cluster running worker-orcd on Ray Serve, shared by the tests of this directory.

Started once per session by the local command (`python -m worker_orcd.serve_ray`,
in its own process, as a user starts it), with Serve's autoscaling between 2 and
3 replicas of one thread each on the real SmolLM2 model and two tenants' keys.
The tests join the cluster as a second Ray driver to look at the job directory,
Serve's state and the replicas' actors. Skipped, with the reason, where Ray
Serve is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.processes import free_port
from testkit.waiting import wait_until

# The local cluster asks its drivers for the token it made (Ray's default); a driver
# reads this when Ray is imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")


def import_ray():
    """Ray and Serve, or None; Ray's own import-time deprecation warnings are not this suite's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import ray
            from ray import serve  # noqa: F401
        except ImportError:
            return None
    return ray


TOKENS = {"alice": "alice-token", "bob": "bob-token"}
APP = "worker-orcd"
# Streams per replica Serve's autoscaler aims at. With --max-queue 3 a worker takes 4 jobs
# (one running), so 20 jobs at once are 5 replicas' worth: Serve adds the third (the most).
TARGET_ONGOING = 4


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[tenant]}"}


@dataclass
class ServeAddress:
    """The one public address, for testkit.streams.StreamThread (which asks for `client()`)."""

    url: str
    tenant: str = "alice"

    def client(self, **kwargs: Any) -> httpx.Client:
        headers = {**auth(self.tenant), **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), headers=headers, **kwargs)


@dataclass
class Cluster:
    proc: subprocess.Popen
    info: dict[str, Any]
    log_path: Path

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def state_base(self) -> Path:
        return Path(self.info["state_base"])

    def address(self, tenant: str = "alice") -> ServeAddress:
        return ServeAddress(self.url, tenant)

    def client(self, tenant: str = "alice", **kwargs: Any) -> httpx.Client:
        return self.address(tenant).client(**kwargs)

    @property
    def directory(self):
        import ray

        return ray.get_actor(self.info["directory"], namespace=self.info["namespace"])

    def replicas(self) -> list[dict[str, Any]]:
        import ray

        return ray.get(self.directory.list_replicas.remote())

    def live(self) -> set[str]:
        return {r["replica"] for r in self.replicas() if r["state"] == "live"}

    def entry(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        import ray

        return ray.get(self.directory.entry.remote(tenant, job_id))

    def jobs_of(self, replica_id: str) -> list[list[str]]:
        import ray

        return ray.get(self.directory.jobs_of.remote(replica_id))

    def worker_states(self) -> dict[str, int]:
        from ray import serve

        with warnings.catch_warnings():  # Serve's own, about settings it deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            deployment = serve.status().applications[APP].deployments["Worker"]
        return {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items() if v}

    def settle(self, replicas: int = 2, timeout: float = 180.0) -> set[str]:
        """Until Serve runs exactly `replicas` Worker replicas, none starting or stopping,
        and each is registered in the job directory."""

        def settled() -> set[str] | None:
            states = self.worker_states()
            live = self.live()
            if states == {"RUNNING": replicas} and len(live) == replicas:
                return live
            return None

        return wait_until(settled, timeout=timeout, interval=0.2)

    def replica_actor(self, replica_id: str):
        import ray

        return ray.get_actor(f"SERVE_REPLICA::{APP}#Worker#{replica_id}", namespace="serve")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    ray = import_ray()
    if ray is None:
        pytest.skip('Ray Serve is not installed (pip install -e ".[test]" installs it)')
    base = tmp_path_factory.mktemp("ray-serve")
    ready = base / "ready.json"
    log_path = base / "serve.log"
    env = {
        **os.environ,
        # Serve's autoscaler sees the load within half a second (its default is 10 s).
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    }
    cmd = [
        sys.executable, "-m", "worker_orcd.serve_ray",
        "--port", str(free_port()),
        "--min-replicas", "2", "--max-replicas", "3",
        "--target-ongoing", str(TARGET_ONGOING),
        "--upscale-delay-s", "1", "--downscale-delay-s", "2", "--look-back-s", "1",
        "--threads", "1", "--replica-cpus", "1",
        "--serve-queue", "64",
        "--drain-sec", "8",
        "--state-base", str(base / "state"),
        "--ready-file", str(ready),
        "--",
        *(a for tenant, token in TOKENS.items() for a in ("--api-key", f"{tenant}={token}")),
        "--max-queue", "3",
        "--max-jobs-per-tenant", "0",
        "--shutdown-grace-sec", "1",
    ]  # fmt: skip
    # Not in a session of its own: started so (start_new_session), the cluster's proxy and
    # router were seen to stall for seconds while its engines decoded, likely the kernel's
    # autogroup scheduling sharing the CPU between the two sessions as groups.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    cluster = Cluster(proc, {}, log_path)
    deadline = time.monotonic() + 300
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"worker-orcd on Ray Serve did not start:\n{cluster.log_tail()}")
        time.sleep(0.2)
    try:
        cluster.info = json.loads(ready.read_text())
        ray.init(address=cluster.info["ray_address"], logging_level="warning", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM: the command deletes the application (each replica drains) and stops Ray."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
