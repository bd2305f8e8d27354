"""The ASGI app: routes, middleware and error handlers around one Worker."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from worker_orcd.http.correlation import CorrelationIdMiddleware
from worker_orcd.http.errors import EXCEPTION_HANDLERS
from worker_orcd.http.routes import ROUTES
from worker_orcd.worker import Worker


def create_app(worker: Worker) -> Starlette:
    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(CorrelationIdMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.worker = worker
    return app
