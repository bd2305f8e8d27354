"""Plain HTTP errors: one JSON shape for every one of them (`worker_orcd.api.errors`).

{"error": {"code", "message", "details"?, "correlation_id"}}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from worker_orcd.api.errors import HTTP_STATUS, error_body
from worker_orcd.errors import ErrorCode
from worker_orcd.log import log_event

CORRELATION_HEADER = "X-Correlation-Id"

_STATUS_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.PAYLOAD_TOO_LARGE}


class ErrorAnswer(Exception):
    """Raised by a route to answer with an error; nothing has been queued. `headers`
    go on the answer (Retry-After, say)."""

    def __init__(self, message: str, headers: Mapping[str, str] | None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class RequestError(ErrorAnswer):
    """An error answered in the worker's own shape."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers)
        self.code = code
        self.details = details


def correlation_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("correlation_id")


def error_response(
    request: Request,
    code: ErrorCode,
    message: str,
    *,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = error_body(code, message, correlation_id_of(request), details)
    return JSONResponse(body, status_code=HTTP_STATUS[code], headers=headers)


async def on_request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return error_response(request, exc.code, exc.message, details=exc.details, headers=exc.headers)


async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _STATUS_CODES.get(exc.status_code, ErrorCode.INVALID_REQUEST)
    if exc.status_code >= 500:
        code = ErrorCode.INTERNAL
    message = {
        ErrorCode.NOT_FOUND: f"no route for {request.method} {request.url.path}",
        ErrorCode.METHOD_NOT_ALLOWED: f"{request.method} is not allowed on {request.url.path}",
        ErrorCode.PAYLOAD_TOO_LARGE: "request body is too large",
    }.get(code, str(exc.detail))
    return error_response(request, code, message, headers=exc.headers)


async def on_client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    # The connection went (the client left, or its read deadline closed it, WO-LIMIT-3)
    # before the body was whole: no internal error, and nobody reads the answer.
    return error_response(request, ErrorCode.REQUEST_TIMEOUT, "the connection closed before the request was whole")


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette runs this outside every middleware, so the correlation header is set here.
    cid = correlation_id_of(request)
    log_event(
        "http_internal_error",
        logging.ERROR,
        correlation_id=cid,
        path=request.url.path,
        error=repr(exc),
    )
    headers = {CORRELATION_HEADER: cid} if cid else None
    return error_response(request, ErrorCode.INTERNAL, "internal error; the worker logged it", headers=headers)


EXCEPTION_HANDLERS = {
    RequestError: on_request_error,
    HTTPException: on_http_exception,
    ClientDisconnect: on_client_disconnect,
    Exception: on_unexpected,
}
