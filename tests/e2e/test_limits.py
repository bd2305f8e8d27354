"""Request limits (WO-LIMIT-1): body size, header count and size, JSON depth;
all answered with the JSON error of specs/contract.md, "Plain HTTP errors"."""

from __future__ import annotations

import json

import pytest

from testkit.prompts import CHAT
from testkit.streams import CORRELATION_HEADER, assert_error, uid

MAX_BODY = 8192
PROMPT = CHAT.format("Say hi.")


@pytest.fixture(scope="module")
def small_body_worker(shared_worker):
    return shared_worker("--threads", "1", "--max-body-bytes", str(MAX_BODY))


@pytest.fixture
def c(small_body_worker):
    with small_body_worker.client() as client:
        yield client
        # No limit breach leaves the worker unwell or with a job behind.
        health = client.get("/health").json()
        assert health["status"] == "healthy" and health["queue_depth"] == 0


def padded_body(size: int) -> bytes:
    """A valid one-token execute body of exactly `size` bytes (padded with JSON whitespace)."""
    body = json.dumps({"job_id": uid("limit"), "prompt": PROMPT, "max_tokens": 1, "temperature": 0}).encode()
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("path", ["/execute", "/cancel"])
def test_body_over_limit_with_content_length(c, path):
    r = c.post(path, content=b"{" + b" " * MAX_BODY + b"}", headers={"Content-Type": "application/json"})
    assert "content-length" in {k.lower() for k in r.request.headers}
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("path", ["/execute", "/cancel"])
def test_body_over_limit_chunked(c, path):
    def chunks():
        yield b'{"job_id": "chunked", "prompt": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"a" * 1024
        yield b'"}'

    r = c.post(path, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


def test_body_at_the_limit_is_accepted(c):
    r = c.post("/execute", content=padded_body(MAX_BODY), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert "event: end" in r.text
    r = c.post("/execute", content=padded_body(MAX_BODY + 1), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


def header_fields_and_bytes(c, extra: dict[str, str]) -> tuple[int, int]:
    """What the worker will count for GET /jobs with these extra headers."""
    raw = c.build_request("GET", "/jobs", headers=extra).headers.raw
    return len(raw), sum(len(k) + len(v) for k, v in raw)


def test_too_many_header_fields(c):
    base, _ = header_fields_and_bytes(c, {})
    at_limit = {f"X-Extra-{i}": "v" for i in range(100 - base)}
    assert header_fields_and_bytes(c, at_limit)[0] == 100
    assert c.get("/jobs", headers=at_limit).status_code == 200
    over = {**at_limit, "X-One-More": "v"}
    assert_error(c.get("/jobs", headers=over), 431, "HEADERS_TOO_LARGE")
    assert_error(c.post("/cancel", json={"job_id": "x"}, headers=over), 431, "HEADERS_TOO_LARGE")
    assert_error(c.get("/health", headers={f"X-Extra-{i}": "v" for i in range(200)}), 431, "HEADERS_TOO_LARGE")


def test_headers_too_large(c):
    _, base = header_fields_and_bytes(c, {"X-Big": ""})
    at_limit = {"X-Big": "a" * (16 * 1024 - base)}
    assert header_fields_and_bytes(c, at_limit)[1] == 16 * 1024
    assert c.get("/jobs", headers=at_limit).status_code == 200
    over = {"X-Big": "a" * (16 * 1024 - base + 1)}
    assert_error(c.get("/jobs", headers=over), 431, "HEADERS_TOO_LARGE")
    # Split over several fields, the total is what counts.
    assert_error(c.get("/jobs", headers={f"X-Part-{i}": "a" * 2100 for i in range(8)}), 431, "HEADERS_TOO_LARGE")
    # Far over the limit, but under what uvicorn itself accepts.
    assert_error(c.get("/jobs", headers={"X-Big": "a" * 60 * 1024}), 431, "HEADERS_TOO_LARGE")


def nested(depth: int, inner: str = '"x"') -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("depth", [33, 100, 3000])
def test_deep_json_is_400(c, depth):
    job_id = uid("deep")
    for path, body in [
        ("/execute", f'{{"job_id": "{job_id}", "prompt": "{PROMPT!s}", "stop": {nested(depth)}}}'),
        ("/execute", nested(depth)),
        ("/cancel", f'{{"job_id": {nested(depth, json.dumps(job_id))}}}'),
    ]:
        data = body.replace("\n", "\\n").encode()
        assert len(data) <= MAX_BODY
        r = c.post(path, content=data, headers={"Content-Type": "application/json"})
        assert_error(r, 400, "INVALID_REQUEST")
    assert c.get(f"/jobs/{job_id}").status_code == 404  # nothing was queued


def test_limit_errors_echo_the_correlation_id(c):
    cid = "limits-corr-7"
    cases = [
        c.post("/execute", content=b" " * (MAX_BODY + 1), headers={CORRELATION_HEADER: cid}),
        c.get("/health", headers={CORRELATION_HEADER: cid, **{f"X-E-{i}": "v" for i in range(101)}}),
        c.post("/cancel", content=nested(40).encode(), headers={CORRELATION_HEADER: cid}),
    ]
    for r in cases:
        assert r.status_code in (413, 431, 400)
        assert r.headers[CORRELATION_HEADER] == cid
        assert r.json()["error"]["correlation_id"] == cid
