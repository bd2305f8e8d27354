"""X-Correlation-Id: taken from the request (when well formed) or made, and echoed on every response."""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker_orcd.http.errors import CORRELATION_HEADER

_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEADER = CORRELATION_HEADER.lower().encode()


class CorrelationIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                text = value.decode("latin-1")
                cid = text if _VALID.fullmatch(text) else None
                break
        cid = cid or uuid.uuid4().hex
        scope.setdefault("state", {})["correlation_id"] = cid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[CORRELATION_HEADER] = cid
            await send(message)

        await self.app(scope, receive, send_with_id)
