"""The endpoints: plain functions, each a thin translation between HTTP and the worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker_orcd.errors import ErrorCode
from worker_orcd.http.accept import (
    accept,
    ensure_accepting,
    stream_response,
    tenant_of,
)
from worker_orcd.http.errors import RequestError, correlation_id_of
from worker_orcd.http.health import health_for
from worker_orcd.http.offload import offload_of
from worker_orcd.http.sse import EventStream
from worker_orcd.http.validation import (
    parse_cancel,
    parse_execute,
    parse_json_object,
    parse_list_query,
)
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.log import log_event
from worker_orcd.worker import Worker

OPENAPI_DOCUMENT = Path(__file__).with_name("openapi.json")  # specs/openapi.json
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _worker(request: Request) -> Worker:
    return request.app.state.worker


def is_operator(request: Request) -> bool:
    """Set by the auth middleware: an operator key, or a loopback caller of a worker without keys."""
    return bool(request.scope.get("state", {}).get("operator", False))


async def _json_body(request: Request) -> dict:
    return parse_json_object(await request.body())


async def execute(request: Request) -> EventStream:
    worker = _worker(request)
    try:
        ensure_accepting(worker)
        req = parse_execute(await _json_body(request))
        job, channel = await accept(request, worker, req.job_id, req.prompt, req)
    except RequestError:
        worker.rejected()
        raise
    return stream_response(job, channel, worker)


async def cancel(request: Request) -> JSONResponse:
    job_id = parse_cancel(await _json_body(request))
    worker = _worker(request)
    tenant = tenant_of(request)
    # An unknown id's cancel is kept for an execute still on its way (WO-CANCEL-12).
    phase = worker.cancel(tenant, job_id, CancelReason.CLIENT)
    job = worker.find(tenant, job_id)
    fields: dict[str, Any] = {"job_id": job_id, "correlation_id": correlation_id_of(request), "tenant": tenant}
    if job is not None:  # the cancel request has its own id; the job's links the two
        fields["job_correlation_id"] = job.correlation_id
    if job is None and worker.owned_by_other(tenant, job_id):
        # Answered like an unknown job, so ids leak nothing; the operator still sees it.
        log_event("cancel_denied", **fields)
    log_event(
        "cancel_request",
        **fields,
        reason=CancelReason.CLIENT.value,
        phase=phase.value if phase is not None else "unknown",
    )
    return JSONResponse({"status": "cancelling", "job_id": job_id}, status_code=202)


async def get_job(request: Request) -> JSONResponse:
    job_id = request.path_params["job_id"]
    worker = _worker(request)
    tenant = tenant_of(request)
    job = worker.find(tenant, job_id)
    record = (
        job.snapshot() if job is not None else await offload_of(request).ledger_call(worker.record_of, tenant, job_id)
    )
    if record is None:
        raise RequestError(ErrorCode.JOB_NOT_FOUND, f"no job with id {job_id!r} on this worker")
    body: dict[str, Any] = dict(record)
    if job is not None and record["state"] == "queued":
        position = worker.queue_position(job)
        if position is not None:  # None: taken from the queue since the snapshot
            body["queue_position"] = position
    return JSONResponse(body)


async def list_jobs(request: Request) -> JSONResponse:
    state, limit = parse_list_query(request.query_params)
    recent = _worker(request).recent_records
    return JSONResponse({"jobs": await offload_of(request).ledger_call(recent, tenant_of(request), state, limit)})


async def health(request: Request) -> JSONResponse:
    # The tenant is None for a caller without a valid token on a worker with keys.
    tenant = request.scope.get("state", {}).get("tenant", "")
    return JSONResponse(health_for(_worker(request), tenant, is_operator(request)).model_dump(mode="json"))


async def metrics(request: Request) -> Response:
    return Response(_worker(request).render_metrics(), media_type=PROMETHEUS_TEXT)


async def shutdown(request: Request) -> JSONResponse:
    worker = _worker(request)
    if not is_operator(request):
        log_event("shutdown_denied", correlation_id=correlation_id_of(request), tenant=tenant_of(request))
        raise RequestError(
            ErrorCode.FORBIDDEN,
            "stopping the worker needs an operator key"
            if worker.keyed
            else "a worker without keys is stopped only from its own machine (a loopback address)",
        )
    log_event("shutdown_requested", correlation_id=correlation_id_of(request), via="http")
    if worker.request_shutdown is not None:
        worker.request_shutdown()
    return JSONResponse({"status": "shutting_down"}, status_code=202)


async def openapi(request: Request) -> Response:
    return Response(OPENAPI_DOCUMENT.read_bytes(), media_type="application/json")


ROUTES = [
    Route("/execute", execute, methods=["POST"]),
    Route("/cancel", cancel, methods=["POST"]),
    Route("/jobs", list_jobs, methods=["GET"]),
    Route("/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/shutdown", shutdown, methods=["POST"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
