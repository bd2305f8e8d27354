"""Request size limits, answered as JSON errors before any route runs.

Headers: at most MAX_HEADER_FIELDS fields and MAX_HEADER_BYTES bytes (431). Body:
a Content-Length over the limit is refused at once (413); a body without one is
counted as it arrives by Starlette's RequestBodyLimitMiddleware, whose 413 the
routes' error handler turns into the same JSON error.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import error_response
from worker_orcd.http.validation import plain_decimal

MAX_HEADER_FIELDS = 100
MAX_HEADER_BYTES = 16 * 1024


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        size = sum(len(k) + len(v) for k, v in headers)
        if len(headers) > MAX_HEADER_FIELDS or size > MAX_HEADER_BYTES:
            await error_response(
                Request(scope),
                ErrorCode.HEADERS_TOO_LARGE,
                f"request headers exceed {MAX_HEADER_FIELDS} fields or {MAX_HEADER_BYTES} bytes",
            )(scope, receive, send)
            return
        for name, value in headers:
            if name == b"content-length":
                length = plain_decimal(value)
                if length is None or length > self.max_body_bytes:
                    code, message = (
                        (ErrorCode.INVALID_REQUEST, "Content-Length is not a number")
                        if length is None
                        else (ErrorCode.PAYLOAD_TOO_LARGE, f"request body exceeds {self.max_body_bytes} bytes")
                    )
                    await error_response(Request(scope), code, message)(scope, receive, send)
                    return
                break
        await self.app(scope, receive, send)
