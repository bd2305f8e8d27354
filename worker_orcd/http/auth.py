"""Optional bearer tokens, one per tenant, and the operators' keys.

With keys configured, every path but /health and the browser console's page and
assets (which hold no data) needs `Authorization: Bearer <token>`;
the tenant the token belongs to owns the jobs it submits. An operator key names a
tenant too, and may also do what concerns the whole worker (POST /shutdown, every
job in /health). Tokens are compared in constant time (digests of equal length,
every key compared, no early exit).

Without keys every caller is the tenant "", and the operator is whoever calls
from this machine (a loopback address).

The middleware leaves in scope["state"]: `tenant` (None on /health without a
valid token) and `operator`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from worker_orcd.errors import ErrorCode
from worker_orcd.http.console_page import is_console_path
from worker_orcd.http.errors import error_response

OPEN_PATHS = frozenset({"/health"})


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenTable:
    def __init__(
        self,
        keys: tuple[tuple[str, str], ...],
        operators: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._keys = [(tenant, _digest(token.encode()), False) for tenant, token in keys]
        self._keys += [(tenant, _digest(token.encode()), True) for tenant, token in operators]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def caller_for(self, token: bytes) -> tuple[str, bool] | None:
        """(tenant, is operator) of the token's key; the first key wins."""
        candidate = _digest(token)
        found = None
        for tenant, digest, operator in self._keys:
            if hmac.compare_digest(candidate, digest) and found is None:
                found = (tenant, operator)
        return found

    def tenant_for(self, token: bytes) -> str | None:
        found = self.caller_for(token)
        return found[0] if found is not None else None


def from_loopback(scope: Scope) -> bool:
    """Whether the client's address is 127.0.0.0/8 or ::1 (an IPv4-mapped one too)."""
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, tokens: TokenTable) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if self.tokens and is_console_path(scope["path"]):
            # Static files only; the calls the page makes carry the token.
            state["tenant"] = None
            state["operator"] = False
            await self.app(scope, receive, send)
            return
        if not self.tokens:
            state["tenant"] = ""
            state["operator"] = from_loopback(scope)
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        found = self.tokens.caller_for(token) if token is not None else None
        if found is None and scope["path"] in OPEN_PATHS:
            state["tenant"] = None  # anonymous: the open path says only what is not anyone's
            state["operator"] = False
            await self.app(scope, receive, send)
            return
        if found is None:
            response = error_response(
                Request(scope),
                ErrorCode.UNAUTHORIZED,
                "missing or unknown bearer token; send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        state["tenant"], state["operator"] = found
        await self.app(scope, receive, send)
