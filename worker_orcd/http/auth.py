"""Optional bearer tokens, one per tenant.

With keys configured, every path but /health needs `Authorization: Bearer <token>`;
the tenant the token belongs to owns the jobs it submits. Tokens are compared in
constant time (digests of equal length, every key compared, no early exit).
Without keys every caller is the tenant "".
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import error_response

OPEN_PATHS = frozenset({"/health"})


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenTable:
    def __init__(self, keys: tuple[tuple[str, str], ...]) -> None:
        self._keys = [(tenant, _digest(token.encode())) for tenant, token in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def tenant_for(self, token: bytes) -> str | None:
        candidate = _digest(token)
        found = None
        for tenant, digest in self._keys:
            if hmac.compare_digest(candidate, digest) and found is None:
                found = tenant
        return found


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
        if not self.tokens or scope["path"] in OPEN_PATHS:
            state["tenant"] = ""
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        tenant = self.tokens.tenant_for(token) if token is not None else None
        if tenant is None:
            response = error_response(
                Request(scope),
                ErrorCode.UNAUTHORIZED,
                "missing or unknown bearer token; send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        state["tenant"] = tenant
        await self.app(scope, receive, send)
