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

from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, Field, WithJsonSchema, with_config
from typing_extensions import TypedDict

from worker_orcd.api.fields import CorrelationId, Count
from worker_orcd.errors import REQUEST_CODES, ErrorCode

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


Message = Annotated[str, Field(min_length=1)]
RequestCode = Annotated[str, WithJsonSchema({"enum": [code.value for code in REQUEST_CODES]})]  # an ErrorCode's value
OpenAIErrorType = Literal[
    "invalid_request_error", "authentication_error", "permission_error", "rate_limit_error", "server_error", "cancelled"
]
FORBID = ConfigDict(extra="forbid")


@with_config(FORBID)
class FieldProblem(TypedDict):
    field: Annotated[
        str, Field(description="The field, `stop[1]` for an item; empty when the body as a whole is wrong.")
    ]
    reason: str


@with_config(FORBID)
class ErrorBody(TypedDict):
    code: RequestCode
    message: Message
    details: NotRequired[Annotated[list[FieldProblem], Field(description="For `INVALID_REQUEST`: every bad field.")]]
    correlation_id: CorrelationId | None


@with_config(FORBID)
class ErrorEnvelope(TypedDict):
    """The body of every non-2xx answer (WO-ERR-1)."""

    error: ErrorBody


class OpenAIErrorBody(TypedDict):
    message: Message
    type: OpenAIErrorType
    param: str | None
    code: str | None
    # A job's end, kept from its `error` event.
    retriable: NotRequired[bool]
    tokens_out: NotRequired[Count]
    stop_ms: NotRequired[float]
    cancel_ms: NotRequired[float]
    forced: NotRequired[bool]


@with_config(FORBID)
class OpenAIErrorEnvelope(TypedDict):
    """OpenAI's error shape, for the errors of the OpenAI routes themselves (WO-OAI-10). `code` is OpenAI's where
    it has one (`model_not_found`, `unknown_parameter`, `unsupported_parameter`, `unsupported_value`,
    `invalid_type`, `invalid_value`, `missing_required_parameter`, `empty_array`, `invalid_json`,
    `context_length_exceeded`, `chat_template_missing`, `chat_template_error`), else the worker's stable code
    (specs/contract.md, "Plain HTTP errors"; WO-SSE-4). A job's error also carries the worker's `retriable` and, for a cancel, `tokens_out`,
    `stop_ms`, `cancel_ms` (and `forced`)."""

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


def openai_error_type(status: int, code: ErrorCode | str | None = None) -> OpenAIErrorType:
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
