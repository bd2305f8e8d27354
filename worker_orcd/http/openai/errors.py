"""OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.

The OpenAI routes answer every error of their own in it, so OpenAI clients
read `message`, `type`, `param` and `code` where they expect them. `code` is
OpenAI's where OpenAI has one for the case (`model_not_found`,
`unknown_parameter`, …), else the worker's stable code (`WORKER_BUSY`,
`JOB_EXISTS`, `CANCELLED`, …: specs/contract.md, "Plain HTTP errors" and WO-SSE-4).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from worker_orcd.api.errors import HTTP_STATUS, OpenAIErrorEnvelope, openai_error_body
from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import ErrorAnswer, RequestError

# Set on answers a retry cannot help: the openai client otherwise retries 409,
# 429 and 5xx on its own, and a retry of a job named by X-Request-Id is a 409.
NO_RETRY = {"x-should-retry": "false"}


class OpenAIError(ErrorAnswer):
    """An error answered in OpenAI's shape: `code` is OpenAI's own (a str) or the worker's."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: ErrorCode | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers)
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> OpenAIErrorEnvelope:
        return openai_error_body(self.status, self.message, self.code, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None, code: str | None = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


# The worker's field names in validation details → the OpenAI parameter they came from.
_PROMPT_PARAM = {"chat": "messages", "completion": "prompt"}


def from_request_error(exc: RequestError, kind: str) -> OpenAIError:
    """A worker error raised while accepting a job, in OpenAI's shape."""
    status = HTTP_STATUS[exc.code]
    headers = dict(exc.headers)
    if exc.code is ErrorCode.JOB_EXISTS:
        headers.update(NO_RETRY)
        return OpenAIError(status, f"{exc.message} (the X-Request-Id header)", code=exc.code, headers=headers)
    if exc.code is not ErrorCode.INVALID_REQUEST or not exc.details:
        return OpenAIError(status, exc.message, code=exc.code, headers=headers)
    # Limits checked with the tokenizer (the prompt against the context, stop strings, top_k).
    first = exc.details[0]
    field, reason = first["field"], first["reason"]
    param = _PROMPT_PARAM[kind] if field == "prompt" else field
    code = "context_length_exceeded" if "context" in reason else "invalid_value"
    return OpenAIError(status, f"{param}: {reason}", param=param or None, code=code, headers=headers)
