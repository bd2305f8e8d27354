"""Bearer tokens per tenant (WO-AUTH-1): the token table, header parsing, the
middleware and the TENANT=TOKEN parsing of the CLI."""

from __future__ import annotations

import asyncio
import json

import pytest

from worker_orcd.cli import parse_api_keys
from worker_orcd.http.auth import BearerAuthMiddleware, TokenTable, bearer_token

KEYS = (("alice", "tok-alice"), ("bob", "tok-bob-longer-token"))


def test_token_table_maps_tokens_to_tenants():
    table = TokenTable(KEYS)
    assert table
    assert table.tenant_for(b"tok-alice") == "alice"
    assert table.tenant_for(b"tok-bob-longer-token") == "bob"
    for wrong in (b"", b"tok-alic", b"tok-alicee", b"TOK-ALICE", b"tok-alice ", b"tok-bob"):
        assert table.tenant_for(wrong) is None, wrong


def test_empty_token_table_is_false():
    table = TokenTable(())
    assert not table
    assert table.tenant_for(b"anything") is None


def test_same_token_for_two_tenants_resolves_to_the_first():
    # Not a useful configuration, but the answer must not depend on timing or order of checks.
    table = TokenTable((("first", "shared"), ("second", "shared")))
    assert table.tenant_for(b"shared") == "first"


def scope(*headers: tuple[bytes, bytes], path: str = "/jobs") -> dict:
    return {"type": "http", "method": "GET", "path": path, "headers": list(headers), "query_string": b""}


@pytest.mark.parametrize(
    "value, token",
    [
        (b"Bearer abc", b"abc"),
        (b"bearer abc", b"abc"),
        (b"BEARER abc", b"abc"),
        (b"Bearer   abc  ", b"abc"),
        (b"Bearer a.b-c_d~e+f/g=", b"a.b-c_d~e+f/g="),
        (b"Basic abc", None),
        (b"Bearer", None),
        (b"Bearer ", None),
        (b"Bearer    ", None),
        (b"abc", None),
        (b"Token abc", None),
    ],
)
def test_bearer_token_parsing(value, token):
    assert bearer_token(scope((b"authorization", value))) == token


def test_bearer_token_missing_header():
    assert bearer_token(scope()) is None
    assert bearer_token(scope((b"x-authorization", b"Bearer abc"))) is None


async def _call(middleware, s: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware(s, receive, send)
    return sent


def run_middleware(keys, s: dict) -> tuple[str | None, list[dict]]:
    """Returns the tenant the app saw (None if it was not called) and what was sent."""
    reached: list[str] = []

    async def app(inner_scope, receive, send):
        reached.append(inner_scope["state"]["tenant"])

    sent = asyncio.run(_call(BearerAuthMiddleware(app, TokenTable(keys)), s))
    return (reached[0] if reached else None), sent


def test_middleware_sets_the_tenant():
    tenant, sent = run_middleware(KEYS, scope((b"authorization", b"Bearer tok-bob-longer-token")))
    assert tenant == "bob" and sent == []


@pytest.mark.parametrize(
    "headers",
    [(), ((b"authorization", b"Bearer wrong"),), ((b"authorization", b"Basic dG9rLWFsaWNl"),)],
    ids=["missing", "wrong", "basic"],
)
def test_middleware_rejects_without_a_known_token(headers):
    s = scope(*headers, path="/execute")
    s["state"] = {"correlation_id": "corr-auth-1"}
    tenant, sent = run_middleware(KEYS, s)
    assert tenant is None  # the route never ran
    start, body = sent[0], sent[1]
    assert start["status"] == 401
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert response_headers["www-authenticate"] == "Bearer"
    error = json.loads(body["body"])["error"]
    assert error["code"] == "UNAUTHORIZED" and error["message"]
    assert error["correlation_id"] == "corr-auth-1"
    assert "tok-alice" not in body["body"].decode()


def test_health_is_open_and_no_keys_means_tenant_empty():
    tenant, sent = run_middleware(KEYS, scope(path="/health"))
    assert tenant == "" and sent == []
    tenant, sent = run_middleware((), scope(path="/execute"))
    assert tenant == "" and sent == []
    # Only /health itself is open, not paths that merely start with it.
    tenant, sent = run_middleware(KEYS, scope(path="/healthz"))
    assert tenant is None and sent[0]["status"] == 401


# -- cli.parse_api_keys ------------------------------------------------------------------


def test_parse_api_keys_from_flags():
    assert parse_api_keys(["alice=tok-a", " bob = tok-b "], None) == (("alice", "tok-a"), ("bob", "tok-b"))
    # Only the first "=" separates: a token may contain "=" (base64 padding).
    assert parse_api_keys(["carol=YWJj=="], None) == (("carol", "YWJj=="),)
    assert parse_api_keys([], None) == ()


def test_parse_api_keys_file_with_comments_and_blank_lines(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        "# tenants of the staging cluster\n"
        "\n"
        "carol=tok-c\n"
        "   # an indented comment\n"
        "  dave = tok-d  \n"
        "\n"
    )
    assert parse_api_keys(["alice=tok-a"], keys_file) == (
        ("alice", "tok-a"),
        ("carol", "tok-c"),
        ("dave", "tok-d"),
    )


@pytest.mark.parametrize("line", ["no-separator", "=tok-x", "erin=", "  =  ", "frank=   "])
def test_parse_api_keys_rejects_bad_lines(tmp_path, line):
    with pytest.raises(ValueError, match="TENANT=TOKEN"):
        parse_api_keys([line], None)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"good=tok-g\n{line}\n")
    with pytest.raises(ValueError, match="TENANT=TOKEN"):
        parse_api_keys([], keys_file)


def test_parse_api_keys_error_does_not_echo_the_token():
    with pytest.raises(ValueError) as info:
        parse_api_keys(["=secret-token-value"], None)
    assert "secret-token-value" not in str(info.value)


def test_parse_api_keys_missing_file(tmp_path):
    with pytest.raises(ValueError, match="api-keys-file"):
        parse_api_keys([], tmp_path / "does-not-exist")
