"""A Worker replica: one real worker-orcd worker, and the stream of each job Serve sends it.

The replica starts `worker-orcd serve` as its child on a free port and its own
slot's state dir (worker_orcd.serve_ray.slots), so the worker keeps everything
it has alone: model, queue, ledger, cancel path. Serve sends the replica the
executes (`execute`, a streaming method called by the router), which it relays
to its worker over one pooled HTTP client, bytes unchanged. Cancels and
look-ups do not come this way: the router sends them to the worker's URL
straight, so they reach a replica Serve has stopped routing to (draining).

Its life:
- start: take a slot, start the worker, wait until it is ready, register in the
  job directory and keep a `watch` call open there;
- each execute: relay the worker's answer; bind the job to this replica in the
  directory once the worker accepted it (a non-streamed completion, which the
  worker answers only at its end, as it is sent), mark it ended when its answer
  ends; release its id when the worker refused it;
- removal (scale-down, new version): told by the directory (`watch` answers
  "drain"), the replica lets its jobs run for `drain_sec`, then sends its worker
  SIGTERM: the worker's own drain ends queued jobs `WORKER_SHUTDOWN` and gives
  the running one its grace, then cancels it, every job with its terminal event.
  Serve calls `__del__` once no stream is left; it waits for the worker to exit;
- death: the worker dies with it (worker_orcd.serve_ray.child).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from worker_orcd.serve_ray.cluster import get_directory
from worker_orcd.serve_ray.settings import LOOPBACK, NODE_IP, ServeSettings
from worker_orcd.serve_ray.slots import Slot, lock_is_free, take_slot
from worker_orcd.state_dir import LOCK_FILE as WORKER_LOCK

logger = logging.getLogger("ray.serve")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
    }
)


def relay_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.multi_items() if k.lower() not in HOP_BY_HOP]


def answers_at_end(path: str, body: bytes) -> bool:
    """Whether the worker answers this execute only once its job has ended: an OpenAI
    completion that is not streamed."""
    if not path.startswith("/v1/"):
        return False
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False  # refused by the worker at once
    return isinstance(data, dict) and data.get("stream") is not True


def caller_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What a request the replica sends on the caller's behalf carries: the worker checks
    its token and Host as the caller's own."""
    return [(k, v) for k, v in headers if k.lower() in ("authorization", "x-correlation-id", "host")]


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ChildWorker:
    """The worker process, started and waited for by one thread that lives as long as it.

    The child's parent-death signal is tied to the thread that started it, so that
    thread must not end before the child does: it waits for the child's exit.
    """

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.cmd = cmd
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.exited = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-orcd-child", daemon=True)

    def start(self) -> ChildWorker:
        self._thread.start()
        self.started.wait()
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            # stdout/stderr are the replica's: Ray keeps them in the replica's log files.
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL)
        except BaseException as exc:
            self.error = exc
            self.exited.set()
            return
        finally:
            self.started.set()
        self.proc.wait()
        self.exited.set()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def signal(self, sig: int) -> None:
        if self.proc is not None and not self.exited.is_set():
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    async def wait(self, timeout: float) -> bool:
        return await asyncio.to_thread(self.exited.wait, timeout)


class WorkerReplica:
    async def __init__(self, settings: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits an async constructor
        import ray
        from ray import serve
        from ray.util import get_node_ip_address

        self.settings = ServeSettings.from_dict(settings)
        s = self.settings
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()
        host = get_node_ip_address() if s.worker_host == NODE_IP else s.worker_host
        if host not in (LOOPBACK, "localhost", "::1") and not s.keyed:
            raise RuntimeError(
                f"a worker listening on {host} without API keys would take jobs from anyone who "
                "can reach it; give the workers keys (--api-key or --api-keys-file in worker_args)"
            )
        self.flags = s.worker_flags()
        self.slot: Slot = await asyncio.to_thread(take_slot, s.state_root)
        self.draining = False
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.child: ChildWorker | None = None
        try:
            await self._start_worker(host)
        except BaseException:
            if self.child is not None:
                self.child.signal(signal.SIGKILL)
            self.slot.release()
            raise
        self.http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(None, connect=10.0),
            # Idle connections are dropped before the worker's own keep-alive timeout (5 s),
            # so a request never goes out on one the worker is closing.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32, keepalive_expiry=4.0),
        )
        self.directory = get_directory(s.app_name, float(self.flags.early_cancel_sec))
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        logger.info(f"worker-orcd replica {self.replica_id}: worker {self.url} on {self.slot.path}")

    # -- the worker process ------------------------------------------------------------

    async def _start_worker(self, host: str) -> None:
        import ray

        s = self.settings
        gpu = "0" if ray.get_gpu_ids() else "none"  # Ray narrowed CUDA_VISIBLE_DEVICES to ours
        deadline = time.monotonic() + s.worker_start_timeout_s
        # A worker this slot had may still be exiting (its replica was stopped): wait for it.
        while not await asyncio.to_thread(lock_is_free, self.slot.path / WORKER_LOCK):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker of {self.slot.path} did not exit")
            await asyncio.sleep(0.1)
        for _attempt in range(5):
            port = free_port(host)
            self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
            cmd = [
                s.python or sys.executable,
                "-m",
                "worker_orcd.serve_ray.child",
                str(os.getpid()),
                "serve",
                "--host",
                host,
                "--port",
                str(port),
                "--state-dir",
                str(self.slot.path),
                "--worker-id",
                f"{s.app_name}-{self.slot.name}-{self.replica_id}",
                "--gpu-device",
                gpu,
                "--threads",
                str(s.worker_threads),
                *s.worker_args,
            ]
            self.child = await asyncio.to_thread(ChildWorker(cmd, dict(os.environ)).start)
            if await self._wait_ready(deadline):
                return
            if self.child.returncode != 1:  # 1: e.g. the port was taken meanwhile; try another
                break
        raise RuntimeError(
            f"worker-orcd did not start (exit status {self.child.returncode if self.child else None}); "
            "its reason is the last line of this replica's log"
        )

    async def _wait_ready(self, deadline: float) -> bool:
        assert self.child is not None
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.child.exited.is_set():
                    return False
                try:
                    health = (await http.get("/health")).json()
                    if health.get("status") == "healthy":
                        return True
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.05)
        self.child.signal(signal.SIGKILL)
        raise RuntimeError(f"worker-orcd did not become healthy within {self.settings.worker_start_timeout_s}s")

    # -- Serve's hooks -----------------------------------------------------------------

    async def check_health(self) -> None:
        if self.draining:
            return  # a draining worker says unhealthy, then exits, on purpose
        if self.child is None or self.child.exited.is_set():
            raise RuntimeError(f"the worker exited with status {self.child.returncode if self.child else None}")
        health = (await self.http.get("/health", timeout=10.0)).json()
        if health.get("status") != "healthy":
            raise RuntimeError(f"the worker is unhealthy: {health}")

    async def __del__(self) -> None:
        self.draining = True
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            watcher.cancel()
        child = getattr(self, "child", None)
        if child is not None:
            child.signal(signal.SIGTERM)  # the worker's drain; a no-op if it already exited
            s = self.settings
            if not await child.wait(s.shutdown_grace_sec + s.cancel_deadline_sec + 10.0):
                child.signal(signal.SIGKILL)
                await child.wait(10.0)
        http = getattr(self, "http", None)
        if http is not None:
            await http.aclose()
        directory = getattr(self, "directory", None)
        if directory is not None:
            try:
                directory.unregister.remote(self.replica_id)
            except Exception:
                pass
        slot = getattr(self, "slot", None)
        if slot is not None:
            slot.release()

    # -- the directory -----------------------------------------------------------------

    async def _watch(self) -> None:
        """Stay registered (until Serve stops the replica); drain when the directory says
        Serve is removing it."""
        while True:
            try:
                verdict = await self.directory.watch.remote(self.replica_id, self.url, self.node, str(self.slot.path))
            except asyncio.CancelledError:
                raise
            except Exception:  # the directory is restarting: register again
                await asyncio.sleep(0.2)
                self.directory = get_directory(self.settings.app_name, float(self.flags.early_cancel_sec))
                continue
            if verdict == "drain" and not self.draining:
                asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        self.draining = True
        logger.info(f"worker-orcd replica {self.replica_id}: leaving; {self.active} streams open")
        try:
            await asyncio.wait_for(self.idle.wait(), self.settings.drain_sec)
        except TimeoutError:
            pass
        assert self.child is not None
        self.child.signal(signal.SIGTERM)

    async def _cancel_own(self, job_id: str, headers: list[tuple[str, str]]) -> None:
        """A cancel that came before this replica bound the job: send it to the worker now
        (one that reaches the worker before the execute is kept for it, WO-CANCEL-12)."""
        try:
            await self.http.post("/cancel", json={"job_id": job_id}, headers=caller_headers(headers), timeout=30.0)
        except httpx.HTTPError:
            logger.warning(f"worker-orcd replica {self.replica_id}: a cancel for {job_id} did not reach the worker")

    async def _bind(self, tenant: str, job_id: str, headers: list[tuple[str, str]]) -> None:
        try:
            cancelled_first = await self.directory.bind.remote(tenant, job_id, self.replica_id)
        except Exception:
            return
        if cancelled_first:
            asyncio.get_running_loop().create_task(self._cancel_own(job_id, headers))

    async def _worker_has(self, job_id: str, headers: list[tuple[str, str]]) -> bool:
        """Whether the worker holds the caller's job id: it accepted the job (one answered
        with an error at its end included), or an earlier job of the tenant had the id."""
        try:
            answer = await self.http.get(f"/jobs/{job_id}", headers=caller_headers(headers), timeout=30.0)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    # -- the jobs ----------------------------------------------------------------------

    async def execute(
        self,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        tenant: str | None,
        job_id: str | None,
        claimed: bool,
    ) -> AsyncIterator[Any]:
        """Relay one job's request to the worker: first a dict (status, headers, this
        replica, the job id), then the response's bytes as they come."""
        self.active += 1
        self.idle.clear()
        response: httpx.Response | None = None
        bound = False  # the directory has the job bound to this replica
        binding: asyncio.Task | None = None
        try:
            if tenant is not None and job_id is not None and answers_at_end(path, body):
                # Its answer comes at its end: bound now, so that cancels and look-ups find
                # it while it runs (an early cancel reaches the worker first: WO-CANCEL-12).
                await self._bind(tenant, job_id, headers)
                bound = True
            try:
                request = self.http.build_request("POST", path, params=query or None, headers=headers, content=body)
                response = await self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                if tenant is not None and job_id is not None and (claimed or bound):
                    self.directory.release.remote(tenant, job_id, self.replica_id)
                bound = False
                yield {"status": 0, "headers": [], "replica": self.replica_id, "url": self.url, "error": repr(exc)}
                return
            if path.startswith("/v1/"):  # the OpenAI routes name the job in X-Request-Id
                job_id = response.headers.get("x-request-id") or job_id
            # A stream answers 200 once its job is accepted, a refusal otherwise; an answer
            # at the end may be a refusal or the error the accepted job ended with.
            accepted = response.status_code == 200 or (
                bound and job_id is not None and await self._worker_has(job_id, headers)
            )
            if tenant is not None and job_id is not None:  # before the yield, which may not return
                if accepted and not bound:
                    binding = asyncio.get_running_loop().create_task(self._bind(tenant, job_id, headers))
                    bound = True
                elif not accepted and (claimed or bound):
                    self.directory.release.remote(tenant, job_id, self.replica_id)
                    bound = False
            yield {
                "status": response.status_code,
                "headers": relay_headers(response.headers),
                "replica": self.replica_id,
                "url": self.url,
                "job_id": job_id,
            }
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            if response is not None:
                # Closing a response read only in part closes its connection: the worker
                # sees its client leave and cancels the job (reason "disconnect").
                await asyncio.shield(response.aclose())
            if bound:
                if binding is not None:
                    await asyncio.shield(binding)  # an end marked before its bind would be lost
                try:
                    self.directory.ended.remote(tenant, job_id)
                except Exception:
                    pass
            self.active -= 1
            if self.active == 0:
                self.idle.set()
