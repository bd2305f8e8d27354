"""X-Correlation-Id: taken from the request (when well formed) or made, and echoed on every response."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker_orcd.api.ids import is_job_id
from worker_orcd.http.errors import CORRELATION_HEADER

_HEADER = CORRELATION_HEADER.lower().encode()


def correlation_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's own id when it is well formed, else a new one."""
    for name, value in headers:
        if name == _HEADER:
            text = value.decode("latin-1")
            if is_job_id(text):  # the job id's rule (WO-CORR-1)
                return text
            break
    return uuid.uuid4().hex


class CorrelationIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = correlation_id_from(scope["headers"])
        scope.setdefault("state", {})["correlation_id"] = cid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[CORRELATION_HEADER] = cid
            await send(message)

        await self.app(scope, receive, send_with_id)
