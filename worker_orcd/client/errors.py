"""What the client raises when the worker says no: one exception per HTTP error,
carrying the worker's stable code (specs/contract.md, "Plain HTTP errors").

A job that ends badly is not an exception: its stream ends with an `Error` event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from worker_orcd.errors import ErrorCode

# Answers that say "not now": the same request may succeed later (they carry Retry-After).
RETRIABLE_CODES = frozenset(
    c.value
    for c in (
        ErrorCode.WORKER_BUSY,
        ErrorCode.TENANT_BUSY,
        ErrorCode.WORKER_SHUTTING_DOWN,
        ErrorCode.ENGINE_UNAVAILABLE,
    )
)
# Client-side code of IncompleteStream: never one of the worker's.
STREAM_INCOMPLETE = "STREAM_INCOMPLETE"


class WorkerError(Exception):
    """The worker answered with an error: `code` (e.g. `WORKER_BUSY`), `status` (the HTTP
    status), `message`, `retriable` (the same request may succeed later), `retry_after`
    (seconds, from the header), `details` and `correlation_id` (the worker's, for its logs)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retriable: bool = False,
        retry_after: float | None = None,
        details: Any = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{code} ({status}): {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retriable = retriable
        self.retry_after = retry_after
        self.details = details
        self.correlation_id = correlation_id


class InvalidRequest(WorkerError):
    """400 INVALID_REQUEST: `details` lists every bad field."""


class Unauthorized(WorkerError):
    """401 UNAUTHORIZED: no token, or not one the worker knows."""


class Forbidden(WorkerError):
    """403: FORBIDDEN, HOST_NOT_ALLOWED, ORIGIN_NOT_ALLOWED."""


class NotFound(WorkerError):
    """404: JOB_NOT_FOUND (also another tenant's job), NOT_FOUND."""


class JobExists(WorkerError):
    """409 JOB_EXISTS: this tenant already used the job id."""


class QueueFull(WorkerError):
    """No room for the job now: 503 WORKER_BUSY (the queue) or 429 TENANT_BUSY (this
    tenant's share); retriable, after `retry_after`."""


class Unavailable(WorkerError):
    """503 WORKER_SHUTTING_DOWN or ENGINE_UNAVAILABLE: the worker takes no jobs now."""


class IncompleteStream(WorkerError):
    """A job's stream ended without its terminal event (the connection was cut cleanly).
    The job's fate is unknown to the client: GET /jobs/{id} tells it."""

    def __init__(self, job_id: str) -> None:
        super().__init__(STREAM_INCOMPLETE, f"the stream of job {job_id!r} ended without a terminal event")
        self.job_id = job_id


_CLASSES: dict[type[WorkerError], tuple[ErrorCode, ...]] = {
    InvalidRequest: (ErrorCode.INVALID_REQUEST,),
    Unauthorized: (ErrorCode.UNAUTHORIZED,),
    Forbidden: (ErrorCode.FORBIDDEN, ErrorCode.HOST_NOT_ALLOWED, ErrorCode.ORIGIN_NOT_ALLOWED),
    NotFound: (ErrorCode.JOB_NOT_FOUND, ErrorCode.NOT_FOUND),
    JobExists: (ErrorCode.JOB_EXISTS,),
    QueueFull: (ErrorCode.WORKER_BUSY, ErrorCode.TENANT_BUSY),
    Unavailable: (ErrorCode.WORKER_SHUTTING_DOWN, ErrorCode.ENGINE_UNAVAILABLE),
}
_BY_CODE: dict[str, type[WorkerError]] = {code.value: cls for cls, codes in _CLASSES.items() for code in codes}
# For answers without the worker's JSON body (a proxy's, say).
_BY_STATUS: dict[int, type[WorkerError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: JobExists,
    429: QueueFull,
}


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> WorkerError:
    """The exception for a non-2xx answer: `{"error": {"code", "message", ...}}` as the
    worker writes it (its OpenAI routes too, whose `code` may be null); a code made of the
    status (`HTTP_502`) when there is none (a proxy's answer, say)."""
    error: dict[str, Any] = {}
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            error = parsed["error"]
    except ValueError:
        pass
    code = error.get("code")
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = body.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
    if isinstance(code, str) and code:
        cls = _BY_CODE.get(code) or _BY_STATUS.get(status, WorkerError)
        retriable = code in RETRIABLE_CODES
    else:
        code = f"HTTP_{status}"
        cls = _BY_STATUS.get(status, WorkerError)
        retriable = status in (429, 502, 503, 504)
    return cls(
        code,
        message,
        status=status,
        retriable=retriable,
        retry_after=_seconds(headers.get("retry-after")),
        details=error.get("details"),
        correlation_id=error.get("correlation_id") or headers.get("x-correlation-id"),
    )


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: the worker never sends one
        return None
