"""Bearer tokens per tenant and operator keys (WO-AUTH-1, WO-AUTH-4, WO-AUTH-5): the
token table, header parsing, the middleware and the key parsing of the CLI."""

from __future__ import annotations

import asyncio
import json

import pytest

from worker_orcd.settings.command_line import parse_api_keys
from worker_orcd.http.auth import BearerAuthMiddleware, TokenTable, bearer_token, from_loopback

KEYS = (("alice", "tok-alice"), ("bob", "tok-bob-longer-token"))
OPERATORS = (("ops", "tok-ops"),)


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


def test_operator_keys_are_tenants_with_the_operator_right():
    table = TokenTable(KEYS, OPERATORS)
    assert table.caller_for(b"tok-alice") == ("alice", False)
    assert table.caller_for(b"tok-ops") == ("ops", True)
    assert table.tenant_for(b"tok-ops") == "ops"
    assert table.caller_for(b"tok-op") is None
    assert TokenTable((), OPERATORS)  # operator keys alone turn auth on


def scope(*headers: tuple[bytes, bytes], path: str = "/jobs", client=("127.0.0.1", 40000)) -> dict:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": list(headers),
        "query_string": b"",
        "client": client,
    }


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


NOT_CALLED = "<the app was not called>"


def run_caller(keys, s: dict, operators=()) -> tuple[object, bool | None, list[dict]]:
    """The tenant and operator right the app saw (NOT_CALLED, None if it was not called)
    and what was sent."""
    reached: list[tuple] = []

    async def app(inner_scope, receive, send):
        reached.append((inner_scope["state"]["tenant"], inner_scope["state"]["operator"]))

    sent = asyncio.run(_call(BearerAuthMiddleware(app, TokenTable(keys, operators)), s))
    tenant, operator = reached[0] if reached else (NOT_CALLED, None)
    return tenant, operator, sent


def run_middleware(keys, s: dict) -> tuple[str | None, list[dict]]:
    """Returns the tenant the app saw (None if it was not called) and what was sent."""
    tenant, _, sent = run_caller(keys, s)
    return (None if tenant is NOT_CALLED else tenant), sent


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
    # Without a valid token /health is reached anonymously: no tenant at all.
    for headers in [(), ((b"authorization", b"Bearer wrong"),)]:
        tenant, operator, sent = run_caller(KEYS, scope(*headers, path="/health"))
        assert tenant is None and operator is False and sent == []
    # With one, /health knows whose it is.
    tenant, operator, sent = run_caller(KEYS, scope((b"authorization", b"Bearer tok-alice"), path="/health"))
    assert (tenant, operator, sent) == ("alice", False, [])
    tenant, sent = run_middleware((), scope(path="/execute"))
    assert tenant == "" and sent == []
    # Only /health itself is open, not paths that merely start with it.
    tenant, sent = run_middleware(KEYS, scope(path="/healthz"))
    assert tenant is None and sent[0]["status"] == 401


def test_operator_right_comes_from_the_key():
    ops = scope((b"authorization", b"Bearer tok-ops"), path="/shutdown")
    assert run_caller(KEYS, ops, OPERATORS)[:2] == ("ops", True)
    alice = scope((b"authorization", b"Bearer tok-alice"), path="/shutdown")
    assert run_caller(KEYS, alice, OPERATORS)[:2] == ("alice", False)
    # With keys, being on this machine gives no right: only the key does.
    assert run_caller(KEYS, scope(path="/health", client=("127.0.0.1", 1)), OPERATORS)[:2] == (None, False)


@pytest.mark.parametrize(
    "client, operator",
    [
        (("127.0.0.1", 5000), True),
        (("127.3.4.5", 5000), True),
        (("::1", 5000), True),
        (("::ffff:127.0.0.1", 5000), True),
        (("10.0.0.7", 5000), False),
        (("192.168.1.20", 5000), False),
        (("::ffff:10.0.0.7", 5000), False),
        (("2001:db8::1", 5000), False),
        (("testclient", 50000), False),
        (None, False),
    ],
)
def test_without_keys_the_operator_is_a_loopback_client(client, operator):
    s = scope(path="/shutdown", client=client)
    assert from_loopback(s) is operator
    assert run_caller((), s)[:2] == ("", operator)


# -- settings.command_line.parse_api_keys ----------------------------------------------------


def test_parse_api_keys_from_flags():
    keys = parse_api_keys(["alice=tok-a", " bob = tok-b "], None)
    assert keys.tenants == (("alice", "tok-a"), ("bob", "tok-b")) and keys.operators == ()
    # Only the first "=" separates: a token may contain "=" (base64 padding).
    assert parse_api_keys(["carol=YWJj=="], None).tenants == (("carol", "YWJj=="),)
    assert parse_api_keys([], None) == ((), ())


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
    assert parse_api_keys(["alice=tok-a"], keys_file).tenants == (
        ("alice", "tok-a"),
        ("carol", "tok-c"),
        ("dave", "tok-d"),
    )


def test_parse_operator_keys_from_flags_and_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        "carol=tok-c\n"
        "admin ops=tok-ops\n"
        "  admin\tnight-shift = tok-night  \n"
        "admin=tok-tenant-named-admin\n"  # no space after the word: a tenant called admin
    )
    keys = parse_api_keys(["alice=tok-a"], keys_file, ["root=tok-root=="])
    assert keys.tenants == (("alice", "tok-a"), ("carol", "tok-c"), ("admin", "tok-tenant-named-admin"))
    assert keys.operators == (("root", "tok-root=="), ("ops", "tok-ops"), ("night-shift", "tok-night"))


@pytest.mark.parametrize("line", ["no-separator", "=tok-x", "erin=", "  =  ", "frank=   ", "big corp=tok"])
def test_parse_api_keys_rejects_bad_lines(tmp_path, line):
    with pytest.raises(ValueError, match="TENANT=TOKEN"):
        parse_api_keys([line], None)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"good=tok-g\n{line}\n")
    with pytest.raises(ValueError, match="TENANT=TOKEN"):
        parse_api_keys([], keys_file)


@pytest.mark.parametrize("entry", ["ops", "=tok", "ops=", "night shift=tok"])
def test_parse_api_keys_rejects_bad_operator_keys(tmp_path, entry):
    with pytest.raises(ValueError, match="NAME=TOKEN"):
        parse_api_keys([], None, [entry])
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"admin {entry}\n")
    with pytest.raises(ValueError, match="NAME=TOKEN"):
        parse_api_keys([], keys_file)


def test_parse_api_keys_error_does_not_echo_the_token():
    for flags, admin in ([["=secret-token-value"], []], [[], ["secret-token-value"]]):
        with pytest.raises(ValueError) as info:
            parse_api_keys(flags, None, admin)
        assert "secret-token-value" not in str(info.value)


def test_parse_api_keys_missing_file(tmp_path):
    with pytest.raises(ValueError, match="api-keys-file"):
        parse_api_keys([], tmp_path / "does-not-exist")
