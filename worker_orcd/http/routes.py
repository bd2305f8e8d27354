"""The endpoints: plain functions, each a thin translation between HTTP and the worker."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from anyio import to_thread
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import RequestError, correlation_id_of
from worker_orcd.http.sse import EventChannel, encode_event
from worker_orcd.http.validation import (
    check_token_limits,
    parse_cancel,
    parse_execute,
    parse_json_object,
)
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job, Sampling
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import QueueClosed, QueueFull
from worker_orcd.jobs.registry import JobExists
from worker_orcd.log import log_event
from worker_orcd.worker import Worker

SSE_PING_SEC = 15
RETRY_AFTER_SEC = "1"


def _worker(request: Request) -> Worker:
    return request.app.state.worker


def tenant_of(request: Request) -> str:
    """The caller's tenant, set by the auth middleware; "" when the worker has no keys."""
    return request.scope.get("state", {}).get("tenant", "")


async def _json_body(request: Request) -> dict:
    return parse_json_object(await request.body())


async def execute(request: Request) -> EventSourceResponse:
    worker = _worker(request)
    if not worker.accepting:
        raise RequestError(
            ErrorCode.WORKER_SHUTTING_DOWN,
            "worker is shutting down; send the job to another worker",
            headers={"Retry-After": RETRY_AFTER_SEC},
        )
    req = parse_execute(await _json_body(request))
    tenant = tenant_of(request)
    if worker.manager.find(tenant, req.job_id) is not None:
        raise _job_exists(req.job_id)
    model = worker.model
    # Tokenizing is model code: a thread, not the event loop.
    prompt_tokens, stop_tokens = await to_thread.run_sync(
        lambda: (model.tokenize(req.prompt), [len(model.tokenize(s, add_special=False)) for s in req.stop])
    )
    max_tokens = check_token_limits(
        req,
        len(prompt_tokens),
        stop_tokens,
        n_ctx=worker.config.n_ctx,
        vocab_size=model.n_vocab,
    )
    channel = EventChannel(asyncio.get_running_loop())
    job = Job(
        job_id=req.job_id,
        prompt_tokens=prompt_tokens,
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            repetition_penalty=req.repetition_penalty,
            seed=req.seed,
            stop=req.stop,
        ),
        model=model.info.name,
        correlation_id=correlation_id_of(request),
        tenant=tenant,
        sink=channel.put,
    )
    try:
        worker.manager.submit(job)
    except JobExists:
        raise _job_exists(req.job_id) from None
    except QueueFull:
        raise RequestError(
            ErrorCode.WORKER_BUSY,
            f"the queue is full ({worker.manager.queue.capacity} jobs waiting); retry later",
            headers={"Retry-After": RETRY_AFTER_SEC},
        ) from None
    except QueueClosed:
        raise RequestError(
            ErrorCode.WORKER_SHUTTING_DOWN,
            "worker is shutting down; send the job to another worker",
            headers={"Retry-After": RETRY_AFTER_SEC},
        ) from None
    log_event(
        "job_queued",
        job_id=job.job_id,
        correlation_id=job.correlation_id,
        prompt_tokens=len(prompt_tokens),
        max_tokens=max_tokens,
        queue_depth=len(worker.manager.queue),
    )
    return EventSourceResponse(
        stream_job(job, channel, worker.manager), ping=SSE_PING_SEC, sep="\n"
    )


async def stream_job(job: Job, channel: EventChannel, manager: JobManager) -> AsyncIterator[bytes]:
    """The job's events as SSE bytes, ending after its terminal event.

    If the stream ends any other way (the client went away), the job is cancelled
    exactly as by POST /cancel.
    """
    try:
        while True:
            batch = await channel.get_all()
            yield b"".join(map(encode_event, batch))
            if batch[-1].terminal:  # nothing is ever emitted after it
                return
    finally:
        if not job.state.terminal:
            phase = manager.cancel_job(job, CancelReason.DISCONNECT)
            log_event(
                "cancel_request",
                job_id=job.job_id,
                correlation_id=job.correlation_id,
                reason=CancelReason.DISCONNECT.value,
                phase=phase.value,
            )


async def cancel(request: Request) -> JSONResponse:
    job_id = parse_cancel(await _json_body(request))
    phase = _worker(request).manager.cancel(tenant_of(request), job_id, CancelReason.CLIENT)
    log_event(
        "cancel_request",
        job_id=job_id,
        correlation_id=correlation_id_of(request),
        reason=CancelReason.CLIENT.value,
        phase=phase.value if phase is not None else "unknown",
    )
    return JSONResponse({"status": "cancelling", "job_id": job_id}, status_code=202)


async def get_job(request: Request) -> JSONResponse:
    job_id = request.path_params["job_id"]
    job = _worker(request).manager.find(tenant_of(request), job_id)
    if job is None:
        raise RequestError(ErrorCode.JOB_NOT_FOUND, f"no job with id {job_id!r} on this worker")
    return JSONResponse(job.snapshot())


async def health(request: Request) -> JSONResponse:
    return JSONResponse(_worker(request).health())


def _job_exists(job_id: str) -> RequestError:
    return RequestError(
        ErrorCode.JOB_EXISTS, f"job {job_id!r} already exists on this worker; use a new job_id"
    )


ROUTES = [
    Route("/execute", execute, methods=["POST"]),
    Route("/cancel", cancel, methods=["POST"]),
    Route("/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
]
