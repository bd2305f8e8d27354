"""The error envelopes, each built by one function, and the HTTP status of each code.

The worker's own (specs/contract.md, "Plain HTTP errors"), for every plain HTTP error:

    {"error": {"code", "message", "details"?, "correlation_id"}}

OpenAI's, on the OpenAI routes and their streams (WO-OAI-8):

    {"error": {"message", "type", "param", "code", ...extras}}

where `code` is OpenAI's own where OpenAI has one for the case (`model_not_found`,
`invalid_value`, …), else the worker's stable code, and the extras are a job's end
(`retriable`, `tokens_out`, `stop_ms`, `cancel_ms`, `forced`).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from worker_orcd.errors import ErrorCode

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.HOST_NOT_ALLOWED: 403,
    ErrorCode.ORIGIN_NOT_ALLOWED: 403,
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.JOB_EXISTS: 409,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.TENANT_BUSY: 429,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.CANCELLED: 499,
    ErrorCode.INTERNAL: 500,
    ErrorCode.VRAM_OOM: 500,
    ErrorCode.CUDA_ERROR: 500,
    ErrorCode.WORKER_BUSY: 503,
    ErrorCode.WORKER_SHUTTING_DOWN: 503,
    ErrorCode.WORKER_SHUTDOWN: 503,
    ErrorCode.WORKER_RESTARTED: 503,
    ErrorCode.ENGINE_FAILED: 503,
    ErrorCode.ENGINE_UNAVAILABLE: 503,
    ErrorCode.REPLICA_FAILED: 503,
    ErrorCode.REPLICA_UNAVAILABLE: 503,
    ErrorCode.INFERENCE_TIMEOUT: 504,
}


class ErrorBody(TypedDict):
    code: str  # an ErrorCode's value
    message: str
    details: NotRequired[Any]  # INVALID_REQUEST's list of {"field", "reason"}
    correlation_id: str | None


class ErrorEnvelope(TypedDict):
    error: ErrorBody


class OpenAIErrorBody(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None
    # A job's end, kept from its `error` event.
    retriable: NotRequired[bool]
    tokens_out: NotRequired[int]
    stop_ms: NotRequired[float]
    cancel_ms: NotRequired[float]
    forced: NotRequired[bool]


class OpenAIErrorEnvelope(TypedDict):
    error: OpenAIErrorBody


def status_of(code: str) -> int:
    """The HTTP status of a code read off an event (500 for one the table lacks)."""
    try:
        return HTTP_STATUS.get(ErrorCode(code), 500)
    except ValueError:
        return 500


def error_body(code: ErrorCode, message: str, correlation_id: str | None, details: Any = None) -> ErrorEnvelope:
    """The worker's error envelope."""
    body: ErrorBody = {"code": code.value, "message": message}  # type: ignore[typeddict-item]
    if details is not None:
        body["details"] = details
    body["correlation_id"] = correlation_id  # last, as the contract writes it
    return {"error": body}


def openai_error_type(status: int, code: ErrorCode | str | None = None) -> str:
    if code == ErrorCode.CANCELLED:
        return "cancelled"
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error_body(
    status: int, message: str, code: ErrorCode | str | None, param: str | None = None, **extras: Any
) -> OpenAIErrorEnvelope:
    """OpenAI's error envelope. `code`: an ErrorCode, or OpenAI's own code (a str)."""
    value = code.value if isinstance(code, ErrorCode) else code
    kind = openai_error_type(status, value)
    error: OpenAIErrorBody = {"message": message, "type": kind, "param": param, "code": value}
    error.update(extras)  # type: ignore[typeddict-item]
    return {"error": error}
