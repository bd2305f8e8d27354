"""Submitting a job and streaming it: what `/execute` and the OpenAI-compatible routes share.

Every route that runs the model goes through `accept` (tokenize, check the
limits that need the tokenizer, queue) and reads the job's events with
`stream_response` or `collect_job`, so jobs, queue, ledger, tenants, metrics and
the cancel path are one whatever the API a client speaks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from worker_orcd.api.events import encode_events
from worker_orcd.api.requests import SampledRequest
from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import RequestError, correlation_id_of
from worker_orcd.http.offload import offload_of
from worker_orcd.http.sse import EventStream
from worker_orcd.http.validation import check_token_limits
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.event_channel import EventChannel
from worker_orcd.jobs.events import Event
from worker_orcd.jobs.job import Job
from worker_orcd.jobs.manager import TenantBusy
from worker_orcd.jobs.queue import QueueClosed, QueueFull
from worker_orcd.jobs.registry import JobExists
from worker_orcd.log import log_event
from worker_orcd.supervisor.supervisor import EngineUnavailable
from worker_orcd.worker import Worker

RETRY_AFTER_SEC = "1"

TokenAdjust = Callable[[list[int]], list[int]]
"""What a route does to its prompt's tokens (the chat route drops a BOS doubled by its template)."""


def tenant_of(request: Request) -> str:
    """The caller's tenant, set by the auth middleware; "" when the worker has no keys."""
    return request.scope.get("state", {}).get("tenant", "")


def ensure_accepting(worker: Worker) -> None:
    if not worker.accepting:
        raise shutting_down()


async def accept(
    request: Request,
    worker: Worker,
    job_id: str,
    prompt: str,
    req: SampledRequest,
    *,
    adjust: TokenAdjust | None = None,
    log_fields: dict[str, Any] | None = None,
) -> tuple[Job, EventChannel]:
    """Tokenize and queue a validated request as job `job_id`; raises RequestError with nothing queued.

    `adjust` changes the prompt's tokens before their limits are checked.
    """
    ensure_accepting(worker)
    tenant = tenant_of(request)
    offload = offload_of(request)
    if worker.find(tenant, job_id) is not None:
        raise job_exists(job_id)
    # The ledger's look-up (on a thread) and the engine's tokenizing (a round trip to the
    # engine process, which has the vocabulary) overlap: both stand before the first token.
    in_ledger = asyncio.ensure_future(offload.ledger_call(worker.on_record, tenant, job_id))
    try:
        prompt_tokens, stop_tokens = await worker.tokenize_on_loop(prompt, req.stop, offload.engine_call)
    except EngineUnavailable as exc:
        if await in_ledger:
            raise job_exists(job_id) from None
        raise RequestError(
            ErrorCode.ENGINE_UNAVAILABLE,
            f"the engine cannot take jobs: {exc}",
            headers={"Retry-After": RETRY_AFTER_SEC},
        ) from None
    except BaseException:
        in_ledger.cancel()
        raise
    if await in_ledger:
        raise job_exists(job_id)
    if adjust is not None:
        prompt_tokens = adjust(prompt_tokens)
    model = worker.model
    max_tokens = check_token_limits(
        req,
        len(prompt_tokens),
        stop_tokens,
        n_ctx=worker.n_ctx,
        vocab_size=model.vocab_size,
    )
    channel = EventChannel(asyncio.get_running_loop())
    job = Job(
        job_id=job_id,
        prompt_tokens=prompt_tokens,
        sampling=req.sampling(max_tokens),
        model=model.name,
        correlation_id=correlation_id_of(request),
        tenant=tenant,
        sink=channel.put,
    )
    try:
        worker.submit(job)
    except JobExists:
        raise job_exists(job_id) from None
    except TenantBusy as exc:
        raise RequestError(
            ErrorCode.TENANT_BUSY,
            f"this tenant already has {exc.limit} jobs queued or running, the most one tenant "
            "may have; retry when one has ended",
            headers={"Retry-After": RETRY_AFTER_SEC},
        ) from None
    except QueueFull:
        raise RequestError(
            ErrorCode.WORKER_BUSY,
            f"the queue is full ({worker.queue_capacity} jobs waiting); retry later",
            headers={"Retry-After": RETRY_AFTER_SEC},
        ) from None
    except QueueClosed:
        raise shutting_down() from None
    if job.state.terminal:  # its cancel came first: ended without touching the engine
        log_event(
            "cancelled",
            job_id=job.job_id,
            correlation_id=job.correlation_id,
            reason=job.cancel_flag.reason.value if job.cancel_flag.reason else None,
            phase="before_execute",
            tokens_out=0,
            cancel_requested_at=job.cancel_requested_at,
        )
        return job, channel
    log_event(
        "job_queued",
        job_id=job.job_id,
        correlation_id=job.correlation_id,
        prompt_tokens=len(prompt_tokens),
        max_tokens=max_tokens,
        queue_depth=worker.queue_depth,
        **(log_fields or {}),
    )
    return job, channel


def stream_response(
    job: Job,
    channel: EventChannel,
    worker: Worker,
    encode: Callable[[list[Event]], bytes] = encode_events,
    headers: dict[str, str] | None = None,
) -> EventStream:
    """The job's events as an SSE response, ending after its terminal event. If the
    stream ends any other way (the client went away), the job is cancelled exactly as
    by POST /cancel."""
    return EventStream(channel, encode, lambda: cancel_on_disconnect(job, worker), headers)


async def collect_job(job: Job, channel: EventChannel, worker: Worker, request: Request) -> list[Event] | None:
    """Every event of the job, for an answer sent whole once it has ended.

    None when the client went away first: the job is then cancelled as by a
    disconnect from a stream.
    """
    events: list[Event] = []
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            batch = asyncio.ensure_future(channel.get_all())
            await asyncio.wait((batch, gone), return_when=asyncio.FIRST_COMPLETED)
            if not batch.done():
                batch.cancel()
                return None
            events += batch.result()
            if events[-1].terminal:
                return events
    finally:
        gone.cancel()
        cancel_on_disconnect(job, worker)


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body was read whole before)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def cancel_on_disconnect(job: Job, worker: Worker) -> None:
    """A client that leaves its stream cancels its job (once, and only if still needed)."""
    if job.state.terminal or job.cancel_requested:
        return
    phase = worker.cancel_job(job, CancelReason.DISCONNECT)
    log_event(
        "cancel_request",
        job_id=job.job_id,
        correlation_id=job.correlation_id,
        reason=CancelReason.DISCONNECT.value,
        phase=phase.value,
    )


def job_exists(job_id: str) -> RequestError:
    return RequestError(ErrorCode.JOB_EXISTS, f"job {job_id!r} already exists on this worker; use a new job_id")


def shutting_down() -> RequestError:
    return RequestError(
        ErrorCode.WORKER_SHUTTING_DOWN,
        "worker is shutting down; send the job to another worker",
        headers={"Retry-After": RETRY_AFTER_SEC},
    )
