"""Plain HTTP errors: one JSON shape for every one of them.

{"error": {"code", "message", "details"?, "correlation_id"}}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from worker_orcd.errors import ErrorCode
from worker_orcd.log import log_event

CORRELATION_HEADER = "X-Correlation-Id"

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
    ErrorCode.INFERENCE_TIMEOUT: 504,
}

_STATUS_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.PAYLOAD_TOO_LARGE}


class RequestError(Exception):
    """Raised by a route to answer with a JSON error; nothing has been queued."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def correlation_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("correlation_id")


def error_body(code: ErrorCode, message: str, correlation_id: str | None, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code.value, "message": message}
    if details is not None:
        body["details"] = details
    body["correlation_id"] = correlation_id
    return {"error": body}


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
