"""Web pages in the user's browser: the Host and Origin checks, and CORS.

Any page the user opens may send requests to 127.0.0.1: a form or a fetch POST
goes out whatever its Content-Type (and the worker parses any body as JSON), and
a page served from a name its owner then points at 127.0.0.1 (DNS rebinding) is
even same-origin, so it may read the answers too. Two checks, before any route
runs or any body is read:

- Host: the request must name a host the worker answers to: loopback names
  (localhost, 127.0.0.0/8, [::1], any port), the address it binds when that is a
  specific one, and `--allowed-host` names (`*`: any). With keys configured any
  Host is accepted unless `--allowed-host` is given: a rebinding page has no token.
- Origin: a request a browser marks with an Origin that is neither the worker's
  own (the request's scheme and Host) nor one of `--allow-origin` (`*`: any) is
  refused; `Origin: null` counts as foreign. Requests without an Origin (curl,
  programs) pass.

Answers to the origins let in carry CORS headers, and their preflights are
answered here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import CORRELATION_HEADER, error_response

ANY = "*"
LOOPBACK_NAMES = frozenset({"localhost"})
DEFAULT_PORTS = {"http": 80, "https": 443}
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")

# CORS: what a page let in may send and read.
ALLOW_METHODS = "GET, POST"
ALLOW_HEADERS = f"Authorization, Content-Type, {CORRELATION_HEADER}"
EXPOSE_HEADERS = f"{CORRELATION_HEADER}, Retry-After, WWW-Authenticate"
PREFLIGHT_MAX_AGE = "600"

Origin = tuple[str, str, int]  # scheme, host name, port


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6][:port]` → (name lowercased, without brackets or a
    trailing dot; port or None); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep:
            return None
    else:
        name, sep, port = value.partition(":")
        rest = sep + port
    port_number = None
    if rest:
        digits = rest[1:]
        if not rest.startswith(":") or not (digits.isascii() and digits.isdigit()):
            return None
        port_number = int(digits)
    name = name.rstrip(".")
    if not name or not (_NAME.fullmatch(name) or _is_ip(name)):
        return None
    return name, port_number


def parse_origin(value: str) -> Origin | None:
    """`scheme://host[:port]` → (scheme, host, port with the scheme's default); None
    for anything else, `null` included."""
    scheme, sep, rest = value.strip().lower().partition("://")
    if not sep or scheme not in DEFAULT_PORTS:
        return None
    host = split_host(rest)
    if host is None:
        return None
    name, port = host
    return scheme, name, port if port is not None else DEFAULT_PORTS[scheme]


def normalize_host_name(value: str) -> str:
    """An --allowed-host value: `*`, a host name or an IP address (no port); raises ValueError."""
    if value.strip() == ANY:
        return ANY
    host = split_host(value)
    if host is None or host[1] is not None:
        raise ValueError(f"--allowed-host {value!r} is not a host name or address (without a port)")
    return host[0]


def normalize_origin(value: str) -> str:
    """An --allow-origin value: `*` or `scheme://host[:port]`; raises ValueError."""
    if value.strip() == ANY:
        return ANY
    origin = parse_origin(value)
    if origin is None or value.strip().endswith("/"):
        raise ValueError(f"--allow-origin {value!r} is not an origin like https://app.example:8443")
    return _origin_text(origin)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _is_specific(bind_host: str) -> bool:
    try:
        return not ipaddress.ip_address(bind_host.strip("[]")).is_unspecified
    except ValueError:
        return bool(bind_host)  # a name


def _origin_text(origin: Origin) -> str:
    scheme, name, port = origin
    host = f"[{name}]" if ":" in name else name
    return f"{scheme}://{host}" if port == DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"


class HostRule:
    """Which Host names the worker answers to."""

    def __init__(self, names: Iterable[str], *, any_host: bool) -> None:
        self.names = frozenset(names)
        self.any_host = any_host

    @classmethod
    def for_worker(cls, bind_host: str, allowed: Iterable[str], *, keyed: bool) -> HostRule:
        allowed = [normalize_host_name(name) for name in allowed]
        names = {name for name in allowed if name != ANY}
        if _is_specific(bind_host):
            names.add(bind_host.strip("[]").lower().rstrip("."))
        return cls(names, any_host=ANY in allowed or (keyed and not allowed))

    def allows(self, name: str) -> bool:
        return self.any_host or name in self.names or _is_loopback(name)


class OriginRule:
    """Which foreign origins browsers may call the worker from."""

    def __init__(self, allowed: Iterable[str]) -> None:
        allowed = [normalize_origin(value) for value in allowed]
        self.any_origin = ANY in allowed
        self.origins = frozenset(parse_origin(value) for value in allowed if value != ANY)

    def __bool__(self) -> bool:
        return self.any_origin or bool(self.origins)

    def allows(self, origin: Origin | None) -> bool:
        return self.any_origin or origin in self.origins


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class BrowserGuardMiddleware:
    def __init__(self, app: ASGIApp, hosts: HostRule, origins: OriginRule) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host_value = _header(scope, b"host")
        # No Host at all (HTTP/1.0) is a program, not a browser: browsers always send one.
        host = split_host(host_value) if host_value is not None else None
        if host_value is not None and (host is None or not self.hosts.allows(host[0])):
            await self._refuse(
                scope,
                receive,
                send,
                ErrorCode.HOST_NOT_ALLOWED,
                "this worker does not answer to that Host; start it with --allowed-host NAME to add a name",
            )
            return
        origin_value = _header(scope, b"origin")
        if origin_value is None:
            await self.app(scope, receive, send)
            return
        origin = parse_origin(origin_value)
        if origin is not None and host is not None and origin == self._own_origin(scope, host):
            await self.app(scope, receive, send)
            return
        if not self.origins.allows(origin):
            await self._refuse(
                scope,
                receive,
                send,
                ErrorCode.ORIGIN_NOT_ALLOWED,
                "requests from web pages of other origins are refused; start the worker with "
                "--allow-origin ORIGIN to let one in",
            )
            return
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await self._preflight(origin_value)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Access-Control-Allow-Origin"] = origin_value
                headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
                headers.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    def _own_origin(scope: Scope, host: tuple[str, int | None]) -> Origin:
        scheme = scope.get("scheme", "http")
        name, port = host
        return scheme, name, port if port is not None else DEFAULT_PORTS.get(scheme, 80)

    @staticmethod
    def _preflight(origin_value: str) -> Response:
        return Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": origin_value,
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
                "Vary": "Origin",
            },
        )

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, code: ErrorCode, message: str) -> None:
        await error_response(Request(scope), code, message)(scope, receive, send)
