"""The browser console: `GET /` and its assets under `/console/`.

Plain static files shipped in the package (`console/`), no build step. They hold
no data, so they need no token (the API calls the page makes carry it) and pass
the bearer check (`auth.py`); the browser guard still applies. Every answer
carries a Content-Security-Policy that allows only the worker's own scripts,
styles and API: no inline code, no other origin, no framing.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import RequestError

CONSOLE_DIR = Path(__file__).with_name("console")
PAGE_PATH = "/"
ASSET_PREFIX = "/console/"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files: always revalidated, so a new version of the worker is picked up at once.
    "Cache-Control": "no-cache",
}

PAGE = ("index.html", "text/html; charset=utf-8")
# Only these files are served: a fixed table, so no request path ever reaches the file system.
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}


def is_console_path(path: str) -> bool:
    """Whether a path is the console's page or one of its assets (no token needed)."""
    return path == PAGE_PATH or path.startswith(ASSET_PREFIX)


@cache
def _read(name: str) -> bytes:
    return (CONSOLE_DIR / name).read_bytes()


def _file_response(name: str, media_type: str) -> Response:
    return Response(_read(name), media_type=media_type, headers=SECURITY_HEADERS)


async def page(request: Request) -> Response:
    return _file_response(*PAGE)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = ASSETS.get(name)
    if media_type is None:
        raise RequestError(
            ErrorCode.NOT_FOUND, f"no route for {request.method} {request.url.path}", headers=SECURITY_HEADERS
        )
    return _file_response(name, media_type)


CONSOLE_ROUTES = [
    Route(PAGE_PATH, page, methods=["GET"]),
    Route(ASSET_PREFIX + "{name}", asset, methods=["GET"]),
]
