"""The application's ingress: every HTTP request through Serve's proxy lands here.

Executes (`POST /execute`, the OpenAI completion routes) go to a Worker replica
through Serve (its router picks the replica; autoscaling counts the stream),
and their bytes come back unchanged. Everything about a job by id goes to the
worker that holds it, over HTTP, to the worker's URL from the job directory:

- `POST /cancel`: to the owner's worker (this router's memory of the executes it
  relayed, else the directory); when the owner is unknown (the execute is still
  in Serve's queue, or the directory restarted) or unreachable, to every
  replica's worker at once. A cancel is an idempotent 202 on every worker, and
  one for an id a worker does not know is kept there for its execute, so the
  fan-out is safe.
- `GET /jobs/{id}`: the owner, else every replica (the first 200 wins), else, when
  the workers answered 404 (not a refusal of the caller), the ledgers dead or
  removed replicas left on this node, else 404.
- `GET /jobs`, `/health`, `/metrics`: every replica, merged.

Requests are forwarded with the caller's headers (its bearer token included), so
each worker checks tenants, Host and Origin itself, exactly as alone. The router
reads the token only to name the tenant for the directory's keys, and bounds
bodies as the workers do (`--max-body-bytes`) before it reads them whole.

An execute's job id is claimed in the directory before Serve takes it; the
router renews the claim while Serve holds the execute and releases it when the
execute reaches no worker (its client left, its replica failed, Serve's queue
was full, the router failed).

If a replica dies while its job streams, the stream ends with one `error` event
`REPLICA_FAILED` written here, and the job's record (its ledger, read here until
a new replica takes the slot over) reads `failed` / `WORKER_RESTARTED`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from worker_orcd.api.errors import HTTP_STATUS, error_body, openai_error_body
from worker_orcd.api.ids import is_job_id
from worker_orcd.errors import ErrorCode
from worker_orcd.http.auth import TokenTable, bearer_token
from worker_orcd.serve_ray import merge, slots
from worker_orcd.serve_ray.cluster import get_directory
from worker_orcd.serve_ray.directory import CLAIM_SEC
from worker_orcd.serve_ray.replica import HOP_BY_HOP, relay_headers
from worker_orcd.serve_ray.settings import ServeSettings

logger = logging.getLogger("ray.serve")

CORRELATION = "x-correlation-id"
EXECUTE_PATHS = {"/execute": False, "/v1/chat/completions": True, "/v1/completions": True}
OWNERS_KEPT = 10_000
FORWARD_TIMEOUT = httpx.Timeout(60.0, connect=3.0)
ROUTE_HEADER = "X-Cancel-Route"  # cached | owner | fanout: how a cancel found its job
CLAIM_RENEW_SEC = CLAIM_SEC / 4  # a few renewals may be lost before a held claim lapses


class Router:
    def __init__(self, workers: Any, settings: dict[str, Any]) -> None:
        self.settings = ServeSettings.from_dict(settings)
        keys = self.settings.api_keys()
        self.keyed = bool(keys.tenants or keys.operators)
        self.tokens = TokenTable(keys.tenants, keys.operators)
        flags = self.settings.worker_flags()
        self.cancel_mark_sec = float(flags.early_cancel_sec)
        self.max_body_bytes = int(flags.max_body_bytes)
        self.workers = workers.options(method_name="execute", stream=True)
        self.directory = get_directory(self.settings.app_name, self.cancel_mark_sec)
        self.http = httpx.AsyncClient(
            timeout=FORWARD_TIMEOUT,
            # Idle connections end before the workers' keep-alive timeout (5 s) does.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=4.0),
        )
        # (tenant, job id) → (replica id, worker URL) of the executes relayed here.
        self.owners: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        # The replicas last listed by the directory, for when it is restarting or has just
        # restarted (empty until the replicas call it again).
        self.last_replicas: list[list[str]] = []
        self._turn = 0

    # -- dispatch ----------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        try:
            if path in EXECUTE_PATHS and method == "POST":
                return await self.execute(request, openai=EXECUTE_PATHS[path])
            if path == "/cancel" and method == "POST":
                return await self.cancel(request)
            if path.startswith("/jobs/") and method == "GET" and "/" not in path[len("/jobs/") :]:
                return await self.get_job(request, path[len("/jobs/") :])
            if path == "/jobs" and method == "GET":
                return await self.list_jobs(request)
            if path == "/health" and method == "GET":
                return await self.health(request)
            if path == "/metrics" and method == "GET":
                return await self.metrics(request)
            if path == "/shutdown" and method == "POST":
                return self.error(
                    request,
                    ErrorCode.FORBIDDEN,
                    "a replica's worker is stopped by Serve: scale the deployment down or delete the application",
                )
            return await self.forward_any(request)
        except BodyTooLarge:  # as a worker answers it, before any of its routes
            return self.error(
                request,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"request body exceeds {self.max_body_bytes} bytes",
            )
        except NoReplica:
            return self.error(
                request,
                ErrorCode.REPLICA_UNAVAILABLE,
                "no replica's worker could be reached; retry shortly",
                headers={"Retry-After": "1"},
                openai=path.startswith("/v1/"),
            )
        except Exception:  # answered in the contract's error shape, not Serve's plain 500
            logger.exception(f"worker-orcd router: {method} {path} failed")
            return self.error(
                request, ErrorCode.INTERNAL, "internal error; the router logged it", openai=path.startswith("/v1/")
            )

    # -- executes ----------------------------------------------------------------------

    async def execute(self, request: Request, openai: bool) -> Response:
        body = await self.read_body(request)
        headers = self.forward_headers(request)
        tenant = self.tenant(request)
        job_id = self.job_id_of(body, headers, openai)
        claimed: bool | None = False
        if tenant is not None and job_id is not None:
            try:
                claimed = await self.directory.claim.remote(tenant, job_id)
            except Exception:  # the directory is restarting: the owner's ledger still refuses a repeat
                claimed = None
            if claimed is False:
                return self.error(
                    request,
                    ErrorCode.JOB_EXISTS,
                    f"job {job_id!r} already exists on this application; use a new job_id",
                    openai=openai,
                    headers={"x-should-retry": "false"} if openai else None,
                )
            claimed = bool(claimed)
        stream = None
        try:
            stream = self.workers.remote(request.url.path, request.url.query, headers, body, tenant, job_id, claimed)
            return await self.relay_execute(request, openai, stream, tenant, job_id, bool(claimed))
        except BaseException:
            # The client left while Serve held the execute, or this router failed: no worker
            # holds the id (a replica that bound it meanwhile keeps it: only claims are released).
            if stream is not None:
                stream.cancel()
            if claimed:
                self.directory.release.remote(tenant, job_id)
            raise

    async def relay_execute(
        self, request: Request, openai: bool, stream: Any, tenant: str | None, job_id: str | None, claimed: bool
    ) -> Response:
        try:
            first = await self.first_answer(stream, tenant, job_id, claimed)
        except Exception as exc:
            return self.execute_failed(request, exc, openai, tenant, job_id, claimed)
        if first["status"] == 0:  # the replica could not reach its own worker
            self.directory.suspect.remote(first["replica"])
            raise NoReplica()
        job_id = first.get("job_id") or job_id
        if first["status"] == 200 and tenant is not None and job_id is not None:
            self.remember(tenant, job_id, first["replica"], first["url"])
        watch = merge.StreamEnd(openai)
        content_type = dict((k.lower(), v) for k, v in first["headers"]).get("content-type", "")
        is_sse = content_type.startswith("text/event-stream")
        return StreamingResponse(
            self.relay(stream, watch, is_sse, first["replica"], job_id),
            status_code=first["status"],
            headers=_headers_dict(first["headers"]),
        )

    async def first_answer(self, stream: Any, tenant: str | None, job_id: str | None, claimed: bool) -> dict:
        """The replica's first message; until it comes (Serve holds the execute, or a
        completion not streamed runs), the claim is renewed."""
        pending = asyncio.ensure_future(stream.__anext__())
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=CLAIM_RENEW_SEC)
                if done:
                    return pending.result()
                if claimed:
                    self.directory.renew.remote(tenant, job_id)
        except asyncio.CancelledError:
            pending.cancel()
            pending.add_done_callback(lambda t: t.cancelled() or t.exception())  # nobody reads it
            raise

    def execute_failed(
        self, request: Request, exc: Exception, openai: bool, tenant: str | None, job_id: str | None, claimed: bool
    ) -> Response:
        from ray.serve.exceptions import BackPressureError

        if claimed:  # nothing was queued, or the replica that took it is gone
            self.directory.release.remote(tenant, job_id)
        if isinstance(exc, BackPressureError):
            code, message = ErrorCode.WORKER_BUSY, "every worker's queue and Serve's queue are full; retry later"
        else:
            logger.warning(f"worker-orcd: an execute's replica failed before answering: {exc!r}")
            code = ErrorCode.REPLICA_FAILED
            message = "the replica chosen for this job failed before it answered; resubmit it under a new job_id"
        return self.error(request, code, message, headers={"Retry-After": "1"}, openai=openai)

    async def relay(
        self, stream: Any, watch: merge.StreamEnd, is_sse: bool, replica: str, job_id: str | None
    ) -> AsyncIterator[bytes]:
        done = False
        try:
            async for chunk in stream:
                if is_sse:  # a plain body has no terminal event to watch for
                    watch.feed(chunk)
                yield chunk
            done = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the replica died (or its actor became unreachable) mid-stream
            done = True
            logger.warning(f"worker-orcd: replica {replica} failed during job {job_id}: {exc!r}")
            self.directory.suspect.remote(replica)
            if not is_sse:
                raise  # a plain body cut short: the connection closes
            if not watch.ended:
                yield watch.failure(job_id)
        finally:
            if not done:
                # The client left (Serve cancelled this request): stop the replica's stream,
                # which closes the worker's connection, which cancels the job.
                stream.cancel()

    # -- job by id ---------------------------------------------------------------------

    async def cancel(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await self.read_body(request)
        tenant = self.tenant(request)
        job_id = _cancel_id(body)
        if tenant is None or job_id is None:
            return await self.forward_any(request, body)  # the worker's own 400 or 401
        headers = self.forward_headers(request)
        timing: list[tuple[str, float]] = []
        key = (tenant, job_id)
        owner = self.owners.get(key)
        route = "cached"
        located = None
        if owner is None:
            located = await self.locate(tenant, job_id, for_cancel=True, timing=timing)
            owner = tuple(located["owner"]) if located["owner"] else None
            route = "owner"
        if owner is not None:
            t = time.perf_counter()
            answer = await self.send(owner, "POST", "/cancel", headers, body)
            timing.append(("forward", time.perf_counter() - t))
            if answer is not None:
                return self.relay_answer(answer, {ROUTE_HEADER: route}, timing, started)
            if located is None:
                located = await self.locate(tenant, job_id, for_cancel=True, timing=timing)
        assert located is not None
        others = [tuple(r) for r in located["replicas"] if owner is None or r[0] != owner[0]]
        t = time.perf_counter()
        answers = await asyncio.gather(*(self.send(r, "POST", "/cancel", headers, body) for r in others))
        timing.append(("fanout", time.perf_counter() - t))
        good = [a for a in answers if a is not None]
        if not good:
            raise NoReplica()
        best = next((a for a in good if a.status_code == 202), good[0])
        return self.relay_answer(best, {ROUTE_HEADER: "fanout"}, timing, started)

    async def get_job(self, request: Request, job_id: str) -> Response:
        tenant = self.tenant(request)
        if tenant is None:
            return await self.forward_any(request)  # 401 from the worker
        headers = self.forward_headers(request)
        path = request.url.path
        key = (tenant, job_id)
        owner = self.owners.get(key)
        located = None
        if owner is None:
            located = await self.locate(tenant, job_id)
            owner = tuple(located["owner"]) if located["owner"] else None
        not_found: httpx.Response | None = None
        if owner is not None:
            answer = await self.send(owner, "GET", path, headers)
            if answer is not None and answer.status_code != 404:
                return self.relay_answer(answer)
            not_found = answer
        if located is None:
            located = await self.locate(tenant, job_id)
        others = [tuple(r) for r in located["replicas"] if owner is None or r[0] != owner[0]]
        answers = [a for a in await asyncio.gather(*(self.send(r, "GET", path, headers) for r in others)) if a]
        found = next((a for a in answers if a.status_code == 200), None)
        if found is not None:
            return self.relay_answer(found)
        # The ledgers are read only for a caller the workers let in (their Host, Origin and
        # token checks): every worker that answered said 404.
        refusal = next((a for a in answers if a.status_code != 404), None)
        if refusal is not None:
            return self.relay_answer(refusal)
        answer = not_found or (answers[0] if answers else None)
        if answer is None:
            raise NoReplica()
        record = await asyncio.to_thread(slots.find_in_orphans, self.settings.state_root, tenant, job_id)
        if record is not None:
            return JSONResponse(
                record, headers={"X-Correlation-Id": self.correlation_id(request), "X-Job-Source": "ledger"}
            )
        return self.relay_answer(answer)

    async def list_jobs(self, request: Request) -> Response:
        tenant = self.tenant(request)
        if tenant is None:
            return await self.forward_any(request)
        headers = self.forward_headers(request)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        answers = await self.everyone("GET", path, headers)
        for _, answer in answers:
            if answer.status_code != 200:
                return self.relay_answer(answer)  # a bad query: every worker says the same
        limit = int(request.query_params.get("limit") or 50)
        state = request.query_params.get("state")
        orphans = await asyncio.to_thread(slots.list_in_orphans, self.settings.state_root, tenant, state, limit)
        jobs = merge.merge_jobs([*(a.json()["jobs"] for _, a in answers), orphans], limit)
        return JSONResponse({"jobs": jobs}, headers={"X-Correlation-Id": self.correlation_id(request)})

    # -- the whole application ---------------------------------------------------------

    async def health(self, request: Request) -> Response:
        headers = self.forward_headers(request)
        replicas = await self.list_replicas()
        answers = await asyncio.gather(
            *(self.send((r["replica"], r["url"]), "GET", "/health", headers, timeout=5.0) for r in replicas)
        )
        views = [
            (r["replica"], r["state"], a.json())
            for r, a in zip(replicas, answers, strict=False)
            if a is not None and a.status_code == 200
        ]
        return JSONResponse(merge.merge_health(views), headers={"X-Correlation-Id": self.correlation_id(request)})

    async def metrics(self, request: Request) -> Response:
        headers = self.forward_headers(request)
        answers = await self.everyone("GET", "/metrics", headers)
        for _, answer in answers:
            if answer.status_code != 200:
                return self.relay_answer(answer)
        text = merge.merge_metrics([(rid, a.text) for rid, a in answers])
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def forward_any(self, request: Request, body: bytes | None = None) -> Response:
        """A request any worker answers alike (the console, the OpenAPI document, /v1/models,
        a malformed cancel, a refused token, an unknown route): one live replica's worker."""
        if body is None:
            body = await self.read_body(request)
        headers = self.forward_headers(request)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        replicas = [r for r in await self.list_replicas() if r["state"] == "live"] or await self.list_replicas()
        for i in range(len(replicas)):
            r = replicas[(self._turn + i) % len(replicas)]
            answer = await self.send((r["replica"], r["url"]), request.method, path, headers, body)
            if answer is not None:
                self._turn += 1
                return self.relay_answer(answer)
        raise NoReplica()

    # -- helpers -----------------------------------------------------------------------

    async def read_body(self, request: Request) -> bytes:
        """The request's body; BodyTooLarge past the workers' --max-body-bytes (WO-LIMIT-1),
        found from Content-Length or while it arrives, before it is all in memory."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise BodyTooLarge()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge()
            chunks.append(chunk)
        return b"".join(chunks)

    def tenant(self, request: Request) -> str | None:
        """The caller's tenant as the workers will see it; None: the token is refused."""
        if not self.keyed:
            return ""
        token = bearer_token(request.scope)
        return self.tokens.tenant_for(token) if token is not None else None

    def correlation_id(self, request: Request) -> str:
        cid = request.headers.get(CORRELATION)
        if not is_job_id(cid):  # the job id's rule (WO-CORR-1)
            cid = request.scope.setdefault("state", {}).setdefault("wo_correlation_id", uuid.uuid4().hex)
        return cid

    def forward_headers(self, request: Request) -> list[tuple[str, str]]:
        """The caller's headers, with one correlation id, so that every worker a fan-out
        reaches logs the same one."""
        headers = [(k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP and k != CORRELATION]
        headers.append((CORRELATION, self.correlation_id(request)))
        return headers

    @staticmethod
    def job_id_of(body: bytes, headers: list[tuple[str, str]], openai: bool) -> str | None:
        if openai:
            # Serve's proxy gives every request an X-Request-Id, which the OpenAI routes
            # take as the job id: the id is known before the job is sent.
            value = next((v for k, v in headers if k == "x-request-id"), None)
        else:
            try:
                value = json.loads(body).get("job_id")
            except (ValueError, AttributeError, RecursionError):
                return None
        return value if is_job_id(value) else None

    def remember(self, tenant: str, job_id: str, replica: str, url: str) -> None:
        self.owners[(tenant, job_id)] = (replica, url)
        self.owners.move_to_end((tenant, job_id))
        while len(self.owners) > OWNERS_KEPT:
            self.owners.popitem(last=False)

    async def locate(
        self, tenant: str, job_id: str, for_cancel: bool = False, timing: list | None = None
    ) -> dict[str, Any]:
        t = time.perf_counter()
        try:
            located = await self.directory.locate.remote(tenant, job_id, for_cancel)
        except Exception:  # restarting: fan out to the replicas last seen
            self.directory = get_directory(self.settings.app_name, self.cancel_mark_sec)
            located = {"owner": None, "replicas": []}
        located["replicas"] = self.known_replicas(located["replicas"])
        if timing is not None:
            timing.append(("directory", time.perf_counter() - t))
        return located

    async def list_replicas(self) -> list[dict[str, Any]]:
        try:
            replicas = await self.directory.list_replicas.remote()
        except Exception:
            self.directory = get_directory(self.settings.app_name, self.cancel_mark_sec)
            replicas = []
        if replicas:
            self.known_replicas([[r["replica"], r["url"]] for r in replicas])
            return replicas
        return [{"replica": rid, "url": url, "state": "live"} for rid, url in self.known_replicas([])]

    def known_replicas(self, listed: list[list[str]]) -> list[list[str]]:
        """The directory's list; an empty one (a directory just restarted, before the
        replicas called it again) keeps the last known, which are still serving."""
        if listed:
            self.last_replicas = listed
        return self.last_replicas

    async def everyone(
        self, method: str, path: str, headers: list[tuple[str, str]]
    ) -> list[tuple[str, httpx.Response]]:
        replicas = await self.list_replicas()
        answers = await asyncio.gather(*(self.send((r["replica"], r["url"]), method, path, headers) for r in replicas))
        found = [(r["replica"], a) for r, a in zip(replicas, answers, strict=False) if a is not None]
        if not found:
            raise NoReplica()
        return found

    async def send(
        self,
        replica: tuple[str, str],
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> httpx.Response | None:
        """One request to a replica's worker; None (and the replica suspected) when it
        cannot be reached twice. Only idempotent requests come here (a cancel, a look-up)."""
        replica_id, url = replica
        for attempt in (1, 2):
            try:
                return await self.http.request(
                    method, url + path, headers=headers, content=body, timeout=timeout or FORWARD_TIMEOUT
                )
            except httpx.TransportError:
                if attempt == 2:
                    self.directory.suspect.remote(replica_id)
        return None

    @staticmethod
    def relay_answer(
        answer: httpx.Response,
        extra: dict[str, str] | None = None,
        timing: list[tuple[str, float]] | None = None,
        started: float | None = None,
    ) -> Response:
        headers = _headers_dict(relay_headers(answer.headers))
        headers.update(extra or {})
        if timing is not None and started is not None:
            parts = [f"{name};dur={seconds * 1000:.3f}" for name, seconds in timing]
            parts.append(f"total;dur={(time.perf_counter() - started) * 1000:.3f}")
            headers["Server-Timing"] = ", ".join(parts)
        return Response(answer.content, status_code=answer.status_code, headers=headers)

    def error(
        self,
        request: Request,
        code: ErrorCode,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        openai: bool = False,
    ) -> Response:
        """The router's own answer, in the shape a worker's would have."""
        cid = self.correlation_id(request)
        status = HTTP_STATUS[code]
        body = openai_error_body(status, message, code) if openai else error_body(code, message, cid)
        return JSONResponse(body, status_code=status, headers={**(headers or {}), "X-Correlation-Id": cid})


class NoReplica(Exception):
    """No replica's worker could be reached."""


class BodyTooLarge(Exception):
    """The request's body is over the workers' --max-body-bytes."""


def _cancel_id(body: bytes) -> str | None:
    """The id of a well-formed cancel body; None for anything the worker would refuse."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or set(data) != {"job_id"}:
        return None
    value = data["job_id"]
    return value if is_job_id(value) else None


def _headers_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    # Starlette takes a mapping; a repeated header keeps its last value (the workers send none
    # that matters twice).
    return {k: v for k, v in headers}
