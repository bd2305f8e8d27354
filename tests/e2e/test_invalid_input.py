"""Invalid input over HTTP (WO-EXEC-2, WO-CANCEL-2, WO-ERR-1): 400 with every bad field, nothing queued."""

from __future__ import annotations

import json

import pytest

from testkit.prompts import LONG_PROMPT
from testkit.streams import assert_error, uid

pytestmark = pytest.mark.usefixtures("worker_idle")

ID = "{id}"  # replaced by a fresh job id for each case
OK = {"job_id": ID, "prompt": "Hello"}

# Values each field refuses, each sent alone and named in its case's id.
BAD_VALUES = {
    "max_tokens": {"bool": True, "float": 10.5, "string": "10", "zero": 0, "big": 2049},
    "temperature": {"bool": False, "string": "0.7", "low": -0.1, "high": 2.1},
    "top_p": {"bool": True, "low": -0.5, "high": 1.5},
    "top_k": {"bool": True, "float": 4.5, "negative": -1, "over-vocab": 49153},
    "repetition_penalty": {"bool": True, "low": -1.0, "high": 2.01},
    "seed": {"bool": False, "float": 1.5, "string": "42", "negative": -1, "too-big": 2**64},
}

# (id, body or raw bytes, the fields `details` must name; "" is the body as a whole)
EXECUTE_CASES = [
    ("not-json", b"this is not json", [""]),
    ("empty-body", b"", [""]),
    ("truncated", b'{"job_id": "{id}", "prompt": ', [""]),
    ("bad-utf8", b'{"job_id": "{id}", "prompt": "\xff\xfe"}', [""]),
    ("nan", b'{"job_id": "{id}", "prompt": "Hi", "temperature": NaN}', [""]),
    ("infinity", b'{"job_id": "{id}", "prompt": "Hi", "top_p": Infinity}', [""]),
    ("minus-infinity", b'{"job_id": "{id}", "prompt": "Hi", "repetition_penalty": -Infinity}', [""]),
    ("huge-exponent", b'{"job_id": "{id}", "prompt": "Hi", "temperature": 1e999}', ["temperature"]),
    ("array", [{"job_id": "a", "prompt": "Hi"}], [""]),
    ("string", "job", [""]),
    ("number", 42, [""]),
    ("null", None, [""]),
    ("unknown-field", {**OK, "model": "gpt"}, ["model"]),
    ("missing-prompt", {"job_id": ID}, ["prompt"]),
    ("missing-job-id", {"prompt": "Hello"}, ["job_id"]),
    *(
        (f"{field.replace('_', '-')}-{what}", {**OK, field: value}, [field])
        for field, values in BAD_VALUES.items()
        for what, value in values.items()
    ),
    ("prompt-empty", {"job_id": ID, "prompt": ""}, ["prompt"]),
    ("prompt-number", {"job_id": ID, "prompt": 12}, ["prompt"]),
    ("prompt-too-many-chars", {"job_id": ID, "prompt": "a" * 32769}, ["prompt"]),
    # ~6,000 tokens in fewer than 32,768 characters: too long for the 4,096-token context.
    ("prompt-too-long-for-context", {"job_id": ID, "prompt": "Hello there, " * 2000}, ["prompt"]),
    # ~2,800 prompt tokens + 2,048 do not fit 4,096.
    ("max-tokens-beyond-context", {"job_id": ID, "prompt": LONG_PROMPT * 2, "max_tokens": 2048}, ["max_tokens"]),
    ("stop-not-list", {**OK, "stop": "END"}, ["stop"]),
    ("stop-empty-string", {**OK, "stop": [""]}, ["stop"]),
    ("stop-not-strings", {**OK, "stop": ["a", 1]}, ["stop"]),
    ("stop-too-many", {**OK, "stop": ["a", "b", "c", "d", "e"]}, ["stop"]),
    ("stop-too-long", {**OK, "stop": ["ok", "word " * 40]}, ["stop[1]"]),
    ("job-id-empty", {**OK, "job_id": ""}, ["job_id"]),
    ("job-id-too-long", {**OK, "job_id": "j" * 129}, ["job_id"]),
    ("job-id-space", {**OK, "job_id": "my job"}, ["job_id"]),
    ("job-id-slash", {**OK, "job_id": "a/b"}, ["job_id"]),
    ("job-id-unicode", {**OK, "job_id": "caf\u00e9"}, ["job_id"]),
    ("job-id-number", {**OK, "job_id": 7}, ["job_id"]),
    (
        "many-bad-fields",
        {"job_id": ID, "prompt": "", "max_tokens": 0, "temperature": 9, "top_p": True, "stop": "x", "x": 1},
        ["prompt", "max_tokens", "temperature", "top_p", "stop", "x"],
    ),
]


def _send(client, body, job_id: str):
    if isinstance(body, bytes):
        content = body.replace(ID.encode(), job_id.encode())
    else:
        if isinstance(body, dict) and body.get("job_id") == ID:
            body = {**body, "job_id": job_id}
        content = json.dumps(body).encode()
    return client.post("/execute", content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize("case, body, fields", EXECUTE_CASES, ids=[c[0] for c in EXECUTE_CASES])
def test_invalid_execute(client, case, body, fields):
    job_id = uid(case)
    err = assert_error(_send(client, body, job_id), 400, "INVALID_REQUEST")
    details = err["details"]
    assert isinstance(details, list) and details
    assert all(set(d) == {"field", "reason"} and d["reason"] for d in details)
    assert sorted(d["field"] for d in details) == sorted(fields)
    # The message names the first bad field.
    if details[0]["field"]:
        assert details[0]["field"] in err["message"]
    # Nothing was queued.
    assert client.get(f"/jobs/{job_id}").status_code == 404
    health = client.get("/health").json()
    assert health["status"] == "healthy" and health["queue_depth"] == 0 and health["active_job"] is None


def test_worker_still_serves_after_invalid_input(client, worker):
    # After every rejection above, a valid job runs normally and nothing else has run.
    job_id = uid("after-invalid")
    with client.stream("POST", "/execute", json={"job_id": job_id, "prompt": "Hi", "max_tokens": 2}) as r:
        assert r.status_code == 200
        r.read()
    assert client.get(f"/jobs/{job_id}").json()["state"] == "completed"
    invalid_ids = {c[0] for c in EXECUTE_CASES}
    queued = [
        line["job_id"]
        for line in worker.log.events("job_queued")
        if line["job_id"].rsplit("-", 1)[0] in invalid_ids
    ]
    assert queued == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[]",
        b'"job"',
        b"{}",
        b'{"job_id": ""}',
        b'{"job_id": 5}',
        b'{"job_id": null}',
        b'{"job_id": true}',
        b'{"job_id": "has space"}',
        b'{"job_id": "' + b"x" * 129 + b'"}',
        b'{"job_id": "ok", "reason": "because"}',
        b'{"id": "ok"}',
        b'{"job_id": NaN}',
    ],
)
def test_bad_cancel_bodies(client, body):
    err = assert_error(
        client.post("/cancel", content=body, headers={"content-type": "application/json"}),
        400,
        "INVALID_REQUEST",
    )
    assert err["details"]


@pytest.mark.parametrize("job_id", ["has%20space", "x" * 129, "caf%C3%A9", "a:b.c_d-e"])
def test_unknown_or_malformed_job_ids_are_404(client, job_id):
    assert_error(client.get(f"/jobs/{job_id}"), 404, "JOB_NOT_FOUND")


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("GET", "/nope", 404, "NOT_FOUND"),
        ("POST", "/v1/execute", 404, "NOT_FOUND"),
        ("GET", "/jobs/a/b", 404, "NOT_FOUND"),
        ("GET", "/execute", 405, "METHOD_NOT_ALLOWED"),
        ("PUT", "/execute", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/cancel", 405, "METHOD_NOT_ALLOWED"),
        ("POST", "/health", 405, "METHOD_NOT_ALLOWED"),
        ("DELETE", "/jobs/some-job", 405, "METHOD_NOT_ALLOWED"),
    ],
)
def test_unknown_routes_and_methods(client, method, path, status, code):
    err = assert_error(client.request(method, path), status, code)
    assert "details" not in err or err["details"]
