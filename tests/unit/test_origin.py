"""Web pages in a browser: the Host check (WO-AUTH-7), the Origin check and CORS
(WO-AUTH-8), in front of a stand-in app with the worker's correlation middleware."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from worker_orcd.http.correlation import CorrelationIdMiddleware
from worker_orcd.http.errors import EXCEPTION_HANDLERS
from worker_orcd.http.origin import (
    BrowserGuardMiddleware,
    HostRule,
    OriginRule,
    normalize_host_name,
    normalize_origin,
    parse_origin,
    split_host,
)

WORKER = "http://127.0.0.1:8080"


def make_app(
    bind_host: str = "127.0.0.1",
    allowed_hosts: tuple[str, ...] = (),
    allow_origins: tuple[str, ...] = (),
    keyed: bool = False,
) -> tuple[Starlette, list[bytes]]:
    """The middleware as create_app places it, around one route that records each body it reads."""
    bodies: list[bytes] = []

    async def execute(request: Request) -> JSONResponse:
        bodies.append(await request.body())
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/execute", execute, methods=["POST"]), Route("/health", execute, methods=["GET"])],
        middleware=[
            Middleware(CorrelationIdMiddleware),
            Middleware(
                BrowserGuardMiddleware,
                hosts=HostRule.for_worker(bind_host, allowed_hosts, keyed=keyed),
                origins=OriginRule(allow_origins),
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    return app, bodies


def client(app: Starlette) -> TestClient:
    return TestClient(app, base_url=WORKER)


def assert_refused(response, code: str) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["correlation_id"] == response.headers["X-Correlation-Id"]
    assert "access-control-allow-origin" not in response.headers


def assert_refused_before_the_route(headers: dict[str, str], code: str, flag: str) -> None:
    """A POST /execute with these headers is refused with `code` and a message naming the
    flag that would let it in; the route never read its body."""
    app, bodies = make_app()
    r = client(app).post("/execute", content=b"{}", headers=headers)
    assert_refused(r, code)
    assert flag in r.json()["error"]["message"]
    assert bodies == []


# -- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, parsed",
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("LocalHost", ("localhost", None)),
        ("localhost.:80", ("localhost", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", None)),
        ("app.example", ("app.example", None)),
        ("", None),
        ("::1", None),  # IPv6 without brackets
        ("a b", None),
        ("host:port", None),
        ("host:80:81", None),
        ("host:٣", None),  # a digit, but not an ASCII one
        ("[::1", None),
        ("evil.example/x", None),
    ],
)
def test_split_host(value, parsed):
    assert split_host(value) == parsed


@pytest.mark.parametrize(
    "value, parsed",
    [
        ("http://127.0.0.1:8080", ("http", "127.0.0.1", 8080)),
        ("http://localhost", ("http", "localhost", 80)),
        ("HTTPS://App.Example", ("https", "app.example", 443)),
        ("http://[::1]:9", ("http", "::1", 9)),
        ("null", None),
        ("file://", None),
        ("chrome-extension://abc", None),
        ("http://", None),
        ("http://a.example/path", None),
    ],
)
def test_parse_origin(value, parsed):
    assert parse_origin(value) == parsed


def test_flag_values_are_normalized_or_refused():
    assert normalize_host_name("Worker.Example.") == "worker.example"
    assert normalize_host_name("[::1]") == "::1"
    assert normalize_host_name("*") == "*"
    for bad in ("worker.example:8080", "http://worker.example", "a b", ""):
        with pytest.raises(ValueError, match="--allowed-host"):
            normalize_host_name(bad)
    assert normalize_origin("https://App.Example:443") == "https://app.example"
    assert normalize_origin("http://app.example:8000") == "http://app.example:8000"
    assert normalize_origin("*") == "*"
    for bad in ("app.example", "null", "https://app.example/", "ftp://app.example"):
        with pytest.raises(ValueError, match="--allow-origin"):
            normalize_origin(bad)


# -- Host (WO-AUTH-7) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "127.1.2.3:9", "localhost."]
)
def test_loopback_hosts_are_answered(host):
    app, bodies = make_app()
    r = client(app).post("/execute", content=b"{}", headers={"Host": host})
    assert r.status_code == 200 and bodies == [b"{}"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "10.0.0.5:8080", "a b", "x:y:z"])
def test_other_hosts_are_refused_before_the_route(host):
    assert_refused_before_the_route({"Host": host}, "HOST_NOT_ALLOWED", "--allowed-host")


def test_the_bound_address_and_allowed_hosts_are_answered():
    app, _ = make_app(bind_host="10.0.0.5", allowed_hosts=("worker.internal",))
    c = client(app)
    assert c.get("/health", headers={"Host": "10.0.0.5:8080"}).status_code == 200
    assert c.get("/health", headers={"Host": "Worker.Internal:8080"}).status_code == 200
    assert c.get("/health", headers={"Host": "localhost:8080"}).status_code == 200
    assert_refused(c.get("/health", headers={"Host": "10.0.0.6:8080"}), "HOST_NOT_ALLOWED")
    # Bound to every address, no address is "the" worker's: only names listed count.
    app, _ = make_app(bind_host="0.0.0.0")
    assert_refused(client(app).get("/health", headers={"Host": "0.0.0.0:8080"}), "HOST_NOT_ALLOWED")
    app, _ = make_app(allowed_hosts=("*",))
    assert client(app).get("/health", headers={"Host": "anything.example"}).status_code == 200


def test_with_keys_any_host_unless_narrowed():
    app, _ = make_app(keyed=True)
    assert client(app).get("/health", headers={"Host": "worker.example"}).status_code == 200
    app, _ = make_app(keyed=True, allowed_hosts=("worker.example",))
    c = client(app)
    assert c.get("/health", headers={"Host": "worker.example"}).status_code == 200
    assert c.get("/health", headers={"Host": "127.0.0.1:8080"}).status_code == 200
    assert_refused(c.get("/health", headers={"Host": "evil.example"}), "HOST_NOT_ALLOWED")


# -- Origin (WO-AUTH-8) --------------------------------------------------------------------


def test_no_origin_and_same_origin_pass():
    app, bodies = make_app()
    c = client(app)
    # What curl -d sends: a form content type, no Origin.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert c.post("/execute", content=b'{"a": 1}', headers=form).status_code == 200
    for origin in (WORKER, "http://127.0.0.1:8080", "HTTP://127.0.0.1:8080"):
        r = c.post("/execute", content=b"{}", headers={"Origin": origin})
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers  # same origin needs no CORS
    r = c.post("/execute", content=b"{}", headers={"Host": "localhost", "Origin": "http://localhost:80"})
    assert r.status_code == 200
    assert len(bodies) == 5


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://localhost:8080",  # another name for the same address is another origin
        "https://127.0.0.1:8080",  # another scheme too
        "http://127.0.0.1:8081",
        "garbage",
    ],
)
def test_foreign_origins_are_refused(origin):
    assert_refused_before_the_route({"Origin": origin}, "ORIGIN_NOT_ALLOWED", "--allow-origin")


def test_a_refusal_reads_no_body():
    app, _ = make_app()
    received: list[dict] = []
    sent: list[dict] = []

    async def receive():
        received.append({})
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/execute",
        "raw_path": b"/execute",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080"), (b"origin", b"http://evil.example")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 403
    assert json.loads(sent[1]["body"])["error"]["code"] == "ORIGIN_NOT_ALLOWED"
    assert received == []


def test_keys_do_not_open_the_origin_check():
    app, _ = make_app(keyed=True)
    r = client(app).post("/execute", content=b"{}", headers={"Origin": "http://evil.example"})
    assert_refused(r, "ORIGIN_NOT_ALLOWED")


def test_allowed_origins_get_cors():
    app, bodies = make_app(allow_origins=("https://app.example",))
    c = client(app)
    r = c.post("/execute", content=b"{}", headers={"Origin": "https://app.example"})
    assert r.status_code == 200 and bodies == [b"{}"]
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "X-Correlation-Id" in r.headers["access-control-expose-headers"]
    assert "Origin" in r.headers["vary"]
    # The default port written out is the same origin.
    r = c.post("/execute", content=b"{}", headers={"Origin": "https://app.example:443"})
    assert r.status_code == 200
    assert_refused(c.post("/execute", content=b"{}", headers={"Origin": "https://other.example"}), "ORIGIN_NOT_ALLOWED")


def test_preflight_is_answered_for_allowed_origins_only():
    app, bodies = make_app(allow_origins=("https://app.example",))
    c = client(app)
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    r = c.options("/execute", headers={**preflight, "Origin": "https://app.example"})
    assert r.status_code == 204 and bodies == []
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert r.headers["X-Correlation-Id"]
    assert_refused(c.options("/execute", headers={**preflight, "Origin": "https://other.example"}), "ORIGIN_NOT_ALLOWED")


def test_any_origin():
    app, bodies = make_app(allow_origins=("*",))
    c = client(app)
    for origin in ("https://anything.example", "null"):
        r = c.post("/execute", content=b"{}", headers={"Origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    # The Host check still stands: a rebinding page is same-origin, not cross-origin.
    assert_refused(c.post("/execute", content=b"{}", headers={"Host": "evil.example"}), "HOST_NOT_ALLOWED")
    assert len(bodies) == 2


def test_other_scopes_pass():
    app, _ = make_app()
    with client(app) as c:  # lifespan startup and shutdown go through the middleware
        assert c.get("/health").status_code == 200
