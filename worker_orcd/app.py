"""The ASGI app: routes, middleware and error handlers around one Worker.

Middleware, outermost first: correlation id (so every answer carries it),
the browser guard (Host, Origin, CORS: before anything reads the request), size
limits, body limit, bearer auth; then the routes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from worker_orcd.http.auth import BearerAuthMiddleware, TokenTable
from worker_orcd.http.console_page import CONSOLE_ROUTES
from worker_orcd.http.correlation import CorrelationIdMiddleware
from worker_orcd.http.errors import EXCEPTION_HANDLERS
from worker_orcd.http.limits import RequestLimitsMiddleware
from worker_orcd.http.offload import Offload
from worker_orcd.http.openai import OPENAI_ROUTES
from worker_orcd.http.origin import BrowserGuardMiddleware, HostRule, OriginRule
from worker_orcd.http.routes import ROUTES
from worker_orcd.http.sse import RAW_SEND
from worker_orcd.worker import Worker


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    app.state.offload.close()


def create_app(worker: Worker) -> ASGIApp:
    config = worker.config
    app = Starlette(
        lifespan=_lifespan,
        routes=[*ROUTES, *CONSOLE_ROUTES, *OPENAI_ROUTES],
        middleware=[
            Middleware(CorrelationIdMiddleware),
            Middleware(
                BrowserGuardMiddleware,
                hosts=HostRule.for_worker(config.host, config.allowed_hosts, keyed=config.keyed),
                origins=OriginRule(config.allow_origins),
            ),
            Middleware(RequestLimitsMiddleware, max_body_bytes=config.max_body_bytes),
            Middleware(RequestBodyLimitMiddleware, max_body_size=config.max_body_bytes),
            Middleware(BearerAuthMiddleware, tokens=TokenTable(config.api_keys, config.admin_keys)),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    # No bare 307 from "/health/" to "/health": every non-2xx is a JSON error (WO-ERR-1).
    app.router.redirect_slashes = False
    app.state.worker = worker
    app.state.offload = Offload()

    async def with_raw_send(scope: Scope, receive: Receive, send: Send) -> None:
        # A stream's body, written per token, skips the middleware, which acts on starts only.
        scope[RAW_SEND] = send
        await app(scope, receive, send)

    return with_raw_send
