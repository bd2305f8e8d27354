"""Fuzzing the live worker's HTTP API from its OpenAPI document (WO-ERR-1, WO-OBS-3).

Schemathesis generates requests from specs/openapi.json, valid and invalid ones
(wrong types, out-of-range values, unknown fields, odd path ids and headers), and
checks every answer against the same document. On top of its checks, each answer
must meet the contract's rules for errors and streams directly, so a mistake in
the document cannot hide a mistake in the worker.

POST /shutdown is left out: it would stop the worker under test. Jobs are kept
cheap: a generated `max_tokens` that is valid is lowered to a few tokens, the
worker's context is small (so long prompts are rejected, not evaluated) and a
short inference timeout bounds anything that still runs long.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from testkit.streams import assert_well_formed, terminal
from testkit.waiting import wait_until
from testkit.wire import execute
from testkit.worker import WorkerProcess
from tests.e2e.helpers import ALICE

SPEC = Path(__file__).resolve().parents[2] / "specs" / "openapi.json"
MAX_FUZZ_TOKENS = 4  # a generated job never asks for more
CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# The contract's table of plain HTTP errors (specs/contract.md, "Plain HTTP errors"): code → status.
ERROR_STATUS = {
    "INVALID_REQUEST": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "HOST_NOT_ALLOWED": 403,
    "ORIGIN_NOT_ALLOWED": 403,
    "JOB_NOT_FOUND": 404,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "JOB_EXISTS": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "TENANT_BUSY": 429,
    "HEADERS_TOO_LARGE": 431,
    "INTERNAL": 500,
    "WORKER_BUSY": 503,
    "WORKER_SHUTTING_DOWN": 503,
}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,  # bodies, and each SSE event's data
    negative_data_rejection,  # what the document forbids, the worker rejects
    unsupported_method,  # the same path with a method it lacks: 405
    allow_header_conformance,
]

# Bounded and reproducible: the same cases on every run, no per-example deadline
# (other tests may be loading the machine).
FUZZ = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# One inference thread: jobs stay quick even when other processes load the cores.
# A small context rejects long prompts instead of evaluating them; a 16 KiB body
# limit makes the longest generated prompts meet 413 while shorter ones meet the
# context check (400).
FUZZ_WORKER_ARGS = (
    "--threads 1 --n-ctx 512 --inference-timeout-sec 10 --max-queue 4 --max-body-bytes 16384"
).split()


@pytest.fixture(scope="module")
def fuzz_worker():
    w = WorkerProcess(args=FUZZ_WORKER_ARGS).start()
    yield w
    w.stop()


# Loaded at import: the tests are generated per operation when collected. The
# worker's address is only known later, so every call names it.
api_schema = schemathesis.openapi.from_path(
    SPEC,
    config=schemathesis.Config.from_dict(
        {
            "request-timeout": 60,
            "max-stream-events": 64,  # a whole capped job fits; cutting a stream would cancel it
            "generation": {"mode": "all", "deterministic": True, "database": "none"},
            # Stateful sequences would need links the contract does not define.
            "phases": {"stateful": {"enabled": False}},
            # What the worker may answer to a request the document forbids: the
            # plain errors of the contract, a too large body included; never 5xx.
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": ["400", "401", "404", "405", "409", "413"]
                }
            },
        }
    ),
)


def _cap_max_tokens(case: schemathesis.Case) -> None:
    """Lower a valid `max_tokens`, or add one.

    An invalid value stays as it is, so a negative case stays negative.
    """
    body = case.body
    if not isinstance(body, dict):
        return
    v = body.get("max_tokens")
    if v is None:
        body["max_tokens"] = MAX_FUZZ_TOKENS
    elif type(v) is int and 1 <= v <= 2048:
        body["max_tokens"] = min(v, MAX_FUZZ_TOKENS)


def _header(response, name: str) -> str | None:
    values = response.headers.get(name.lower())
    return values[0] if values else None


def check_contract(case: schemathesis.Case, response) -> None:
    """The contract's own rules, independent of the document."""
    assert response.status_code < 500, response.content[:2000]
    cid = _header(response, "X-Correlation-Id")
    assert cid is not None and CORRELATION_ID.fullmatch(cid), f"bad X-Correlation-Id {cid!r}"
    sent = (case.headers or {}).get("X-Correlation-Id")
    if isinstance(sent, str) and CORRELATION_ID.fullmatch(sent):
        assert cid == sent, "a well-formed X-Correlation-Id is echoed (WO-CORR-1)"

    if not 200 <= response.status_code < 300:
        body = json.loads(response.content)
        assert set(body) == {"error"}, body
        error = body["error"]
        assert (
            {"code", "message", "correlation_id"}
            <= set(error)
            <= {
                "code",
                "message",
                "details",
                "correlation_id",
            }
        ), error
        assert ERROR_STATUS.get(error["code"]) == response.status_code, (
            response.status_code,
            error,
        )
        assert isinstance(error["message"], str) and error["message"], error
        assert error["correlation_id"] == cid
        if error["code"] == "INVALID_REQUEST":
            # `details` lists the bad fields; `message` names the first (WO-EXEC-2).
            details = error.get("details")
            assert details and all(set(d) == {"field", "reason"} for d in details), error
            first = details[0]
            assert first["reason"] in error["message"], error
        if response.status_code == 503:
            assert _header(response, "Retry-After") is not None
        return

    if case.operation.path == "/execute":
        check_stream(response.content)


def check_stream(content: bytes) -> None:
    """started, tokens numbered from 0, then exactly one terminal event, last (WO-JOB-2)."""
    events = []
    name = None
    for line in content.decode("utf-8").split("\n"):
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    names = [n for n, _ in events]
    assert names, content
    terminal = [i for i, n in enumerate(names) if n in ("end", "error")]
    assert len(terminal) == 1 and terminal[0] == len(names) - 1, names
    body = names[:-1]
    if body:
        # A job cancelled or ended while queued has no `started`.
        assert body[0] == "started" and set(body[1:]) <= {"token"}, names
        assert [d["i"] for n, d in events if n == "token"] == list(range(names.count("token")))
    last, data = events[-1]
    if last == "end":
        assert data["tokens_out"] <= MAX_FUZZ_TOKENS, data


# For hand-made requests: the document's checks that hold for any single answer.
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def call_documented(worker: WorkerProcess, method: str, path: str, **case_args: Any):
    """Send a hand-made request for a documented operation; check the answer conforms."""
    case = api_schema[path][method].Case(**case_args)
    response = case.call(base_url=worker.url)
    case.validate_response(response, checks=CONFORMANCE)
    check_contract(case, response)
    return response


def fuzz(case: schemathesis.Case, worker: WorkerProcess) -> None:
    if case.operation.path == "/execute":
        _cap_max_tokens(case)
    response = case.call(base_url=worker.url)
    case.validate_response(response, checks=CHECKS)
    check_contract(case, response)


@api_schema.include(method="POST", path="/execute").parametrize()
@FUZZ
def test_fuzz_execute(case, fuzz_worker):
    fuzz(case, fuzz_worker)


@api_schema.include(method="POST", path="/cancel").parametrize()
@FUZZ
def test_fuzz_cancel(case, fuzz_worker):
    fuzz(case, fuzz_worker)


@api_schema.include(method="GET", path="/jobs/{job_id}").parametrize()
@FUZZ
def test_fuzz_get_job(case, fuzz_worker):
    fuzz(case, fuzz_worker)


@api_schema.include(method="GET", path="/jobs").parametrize()
@FUZZ
def test_fuzz_list_jobs(case, fuzz_worker):
    fuzz(case, fuzz_worker)


@api_schema.include(method="GET", path="/health").parametrize()
@FUZZ
def test_fuzz_health(case, fuzz_worker):
    fuzz(case, fuzz_worker)


@api_schema.include(method="GET", path="/metrics").parametrize()
@FUZZ
def test_fuzz_metrics(case, fuzz_worker):
    fuzz(case, fuzz_worker)


@api_schema.include(method="GET", path="/openapi.json").parametrize()
@FUZZ
def test_fuzz_openapi(case, fuzz_worker):
    fuzz(case, fuzz_worker)


@api_schema.include(method="GET", path="/").parametrize()
@FUZZ
def test_fuzz_console(case, fuzz_worker):
    fuzz(case, fuzz_worker)


@api_schema.include(method="GET", path="/console/{asset}").parametrize()
@FUZZ
def test_fuzz_console_asset(case, fuzz_worker):
    fuzz(case, fuzz_worker)


# -- the OpenAI-compatible API (WO-OAI-*): its own error shape, its own streams ------------

MODEL_NAMES: dict[str, str] = {}  # worker url → the model it serves
FUZZ_IDS = itertools.count()


def _loaded_model(worker: WorkerProcess) -> str:
    if worker.url not in MODEL_NAMES:
        MODEL_NAMES[worker.url] = httpx.get(f"{worker.url}/health", timeout=30).json()["model"]
    return MODEL_NAMES[worker.url]


def _prepare_openai_case(case: schemathesis.Case, model: str) -> None:
    """Most cases name the loaded model (a generated name is a 404), and no case asks for
    more than a few tokens; an invalid value stays as it is, so a negative case stays negative."""
    given = (case.headers or {}).get("X-Request-Id")
    n = next(FUZZ_IDS)
    if isinstance(given, str) and CORRELATION_ID.fullmatch(given) and n % 8:
        case.headers["X-Request-Id"] = f"{given[:96]}-{n}"  # most ids new, some taken (409)
    body = case.body
    if not isinstance(body, dict):
        return
    name = body.get("model")
    if isinstance(name, str) and len(name) % 4 != 1:
        body["model"] = model
    capped = False
    for field in ("max_tokens", "max_completion_tokens"):
        v = body.get(field)
        if type(v) is int and 1 <= v <= 2048:
            body[field] = min(v, MAX_FUZZ_TOKENS)
            capped = True
    if not capped and body.get("max_tokens") is None:
        body["max_tokens"] = MAX_FUZZ_TOKENS


OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}
JOB_END_KEYS = {"retriable", "tokens_out", "stop_ms", "cancel_ms", "forced"}  # http/openai/chunks.py


def check_openai_contract(case: schemathesis.Case, response) -> None:
    """The OpenAI routes' rules (WO-OAI-5..10), independent of the document."""
    if not 200 <= response.status_code < 300:
        error = json.loads(response.content).get("error")
        if isinstance(error, dict) and "type" in error:  # the routes' own errors: OpenAI's shape
            assert response.status_code < 500, response.content[:2000]
            assert json.loads(response.content) == {"error": error}
            # A job's own end (a cancel, a timeout) adds what it knows: its latencies, its tokens.
            assert OPENAI_ERROR_KEYS <= set(error) <= OPENAI_ERROR_KEYS | JOB_END_KEYS, error
            assert isinstance(error["message"], str) and error["message"], error
            if response.status_code in (400, 404, 409):
                assert error["type"] == "invalid_request_error", error
            if response.status_code == 404:
                assert error["code"] == "model_not_found" and error["param"] == "model", error
            if response.status_code == 503:
                assert _header(response, "Retry-After") is not None
        else:  # refused before the route (size limits, unknown methods): a plain HTTP error's shape
            check_contract(case, response)
        return
    check_contract(case, response)  # the correlation id
    if case.operation.path == "/v1/models":
        return
    content_type = _header(response, "Content-Type") or ""
    if content_type.startswith("text/event-stream"):
        check_openai_stream(response.content, chat=case.operation.path == "/v1/chat/completions")
    else:
        usage = json.loads(response.content)["usage"]
        assert usage["completion_tokens"] <= MAX_FUZZ_TOKENS, usage


def check_openai_stream(content: bytes, *, chat: bool) -> None:
    """Chunks of one id, one finish reason, the usage chunk after it; `[DONE]` last, or an
    error instead (WO-OAI-6, WO-OAI-8)."""
    payloads = [
        line[len("data: ") :] for line in content.decode("utf-8").split("\n") if line.startswith("data: ")
    ]
    assert payloads, content
    last = payloads[-1]
    if last != "[DONE]":
        assert set(json.loads(last)) == {"error"}, last
        payloads = payloads + ["[DONE]"]  # checked like a finished stream up to its error
    assert "[DONE]" not in payloads[:-1], payloads
    chunks = [json.loads(p) for p in payloads[:-1] if not p.startswith('{"error"')]
    assert len({c["id"] for c in chunks}) <= 1, chunks
    finishes = [i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["finish_reason"]]
    if last == "[DONE]":
        assert len(finishes) == 1, chunks
        rest = chunks[finishes[0] + 1 :]
        assert all(c["choices"] == [] and c["usage"]["completion_tokens"] <= MAX_FUZZ_TOKENS for c in rest), rest
    if chat and chunks:
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[0]


# A whole (non-streamed) answer carries its job's ending as its status: on a loaded
# machine a job may meet the fuzz worker's inference timeout, a documented 504.
OPENAI_CHECKS = [check for check in CHECKS if check is not not_a_server_error]
JOB_ENDINGS = {"INFERENCE_TIMEOUT", "ENGINE_FAILED"}


def fuzz_openai(case: schemathesis.Case, worker: WorkerProcess) -> None:
    _prepare_openai_case(case, _loaded_model(worker))
    response = case.call(base_url=worker.url)
    case.validate_response(response, checks=OPENAI_CHECKS)
    if response.status_code >= 500:  # a job's own ending (WO-OAI-8), never a crash
        assert json.loads(response.content)["error"]["code"] in JOB_ENDINGS, response.content
    check_openai_contract(case, response)


@api_schema.include(method="POST", path="/v1/chat/completions").parametrize()
@FUZZ
def test_fuzz_openai_chat(case, fuzz_worker):
    fuzz_openai(case, fuzz_worker)


@api_schema.include(method="POST", path="/v1/completions").parametrize()
@FUZZ
def test_fuzz_openai_completions(case, fuzz_worker):
    fuzz_openai(case, fuzz_worker)


@api_schema.include(method="GET", path="/v1/models").parametrize()
@FUZZ
def test_fuzz_openai_models(case, fuzz_worker):
    fuzz_openai(case, fuzz_worker)


def test_every_operation_but_shutdown_is_fuzzed():
    # A new endpoint in the document must get its own test above.
    fuzzed = {
        "POST /execute",
        "POST /cancel",
        "GET /jobs/{job_id}",
        "GET /jobs",
        "GET /health",
        "GET /metrics",
        "GET /openapi.json",
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "GET /v1/models",
        "GET /",
        "GET /console/{asset}",
    }
    documented = {op.ok().label for op in api_schema.get_all_operations()}
    assert documented - fuzzed == {"POST /shutdown"}


DOCUMENTED_PATHS = [
    "/execute",
    "/cancel",
    "/jobs",
    "/jobs/x",
    "/health",
    "/metrics",
    "/openapi.json",
    "/shutdown",
    "/console",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Any text, percent-encoded as a client would send it.
path_segment = st.text(st.characters(codec="utf-8"), max_size=12).map(lambda s: quote(s, safe=""))


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(
    method=st.sampled_from(METHODS),
    path=st.one_of(
        st.lists(path_segment, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)),
        st.sampled_from(DOCUMENTED_PATHS).flatmap(
            lambda p: path_segment.map(lambda s: p + "/" + s)
        ),
    ),
)
@example(method="GET", path="/health/")
@example(method="GET", path="/jobs/")
@example(method="DELETE", path="/execute")
@example(method="PUT", path="/jobs/x")
def test_unknown_routes_and_methods(fuzz_worker, method, path):
    """WO-ERR-1: routes and methods outside the document answer JSON errors too."""
    if method == "POST" and path == "/shutdown":
        return
    r = httpx.request(method, fuzz_worker.url + path, timeout=30)
    assert r.status_code < 500, r.text
    assert "X-Correlation-Id" in r.headers
    if r.is_success:
        return  # a documented operation (GET /jobs/<id> of a job the fuzzing made, GET /health)
    body = r.json()
    assert set(body) == {"error"} and ERROR_STATUS[body["error"]["code"]] == r.status_code, body
    assert body["error"]["correlation_id"] == r.headers["X-Correlation-Id"]
    if r.status_code == 405:
        assert r.headers.get("Allow"), "a 405 says which methods the path has"
    else:
        assert r.status_code in (400, 404), (r.status_code, body)


def test_served_document_is_the_spec(fuzz_worker):
    """WO-OBS-3: GET /openapi.json serves specs/openapi.json."""
    r = httpx.get(f"{fuzz_worker.url}/openapi.json", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == json.loads(SPEC.read_text())


def test_document_is_valid_openapi_31():
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    document = json.loads(SPEC.read_text())
    assert document["openapi"].startswith("3.1.")
    errors = [e.message for e in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []


def test_limits_answer_conform(fuzz_worker):
    """413 and 431 (WO-LIMIT-1) are answers of the document too."""
    r = call_documented(
        fuzz_worker, "POST", "/execute", body={"job_id": "too-big", "prompt": "x" * 20000}
    )
    assert r.status_code == 413
    r = call_documented(fuzz_worker, "GET", "/health", headers={"X-Padding": "p" * 17000})
    assert r.status_code == 431


UNAUTHENTICATED = [
    ("POST", "/execute", {"body": {"job_id": "no-token", "prompt": "Hi", "max_tokens": 1}}),
    ("POST", "/cancel", {"body": {"job_id": "no-token"}}),
    ("GET", "/jobs/{job_id}", {"path_parameters": {"job_id": "no-token"}}),
    ("GET", "/jobs", {}),
    ("GET", "/metrics", {}),
    ("GET", "/openapi.json", {}),
    ("POST", "/v1/chat/completions", {"body": {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}}),
    ("POST", "/v1/completions", {"body": {"model": "m", "prompt": "Hi"}}),
    ("GET", "/v1/models", {}),
    ("POST", "/shutdown", {}),  # refused, so the worker stays up
]


@pytest.mark.parametrize(("method", "path", "case_args"), UNAUTHENTICATED)
def test_missing_token_answer_conforms(keyed_worker, method, path, case_args):
    """With API keys, every endpoint but /health answers a documented 401 (WO-AUTH-1)."""
    r = call_documented(keyed_worker, method, path, **case_args)
    assert r.status_code == 401
    assert _header(r, "WWW-Authenticate").startswith("Bearer")


def test_health_needs_no_token(keyed_worker):
    assert call_documented(keyed_worker, "GET", "/health").status_code == 200


def test_access_answers_conform(keyed_worker, fuzz_worker):
    """403s of the access rules, and /health with a token (WO-AUTH-4..8), are answers of the document."""
    r = call_documented(keyed_worker, "GET", "/health", headers=ALICE)
    assert r.status_code == 200 and "busy" in r.json()
    r = call_documented(keyed_worker, "POST", "/shutdown", headers=ALICE)
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
    r = call_documented(keyed_worker, "GET", "/jobs", headers={**ALICE, "Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "ORIGIN_NOT_ALLOWED"
    r = call_documented(fuzz_worker, "GET", "/health", headers={"Host": "evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "HOST_NOT_ALLOWED"


def test_worker_is_healthy_after_fuzzing(fuzz_worker):
    """After the fuzzing (tests run in file order): nothing left the worker broken or busy."""
    assert fuzz_worker.proc.poll() is None, "the worker exited"

    def idle() -> dict[str, Any] | None:
        h = httpx.get(f"{fuzz_worker.url}/health", timeout=30).json()
        return h if h["active_job"] is None and h["queue_depth"] == 0 else None

    health = wait_until(idle, timeout=60, interval=0.1)
    assert health["status"] == "healthy"
    # And it still runs a job to its end.
    with fuzz_worker.client() as c:
        events = execute(c, {"job_id": "after-fuzz", "prompt": "Hello", "max_tokens": 3})
    assert_well_formed(events)
    assert terminal(events).name == "end"
    assert not fuzz_worker.log.events("http_internal_error")
    assert not fuzz_worker.log.events("job_internal_error")


def test_shutdown_answer_conforms(fuzz_worker):
    """Last in this file, as it stops the worker: a documented 202, then exit status 0."""
    r = call_documented(fuzz_worker, "POST", "/shutdown")
    assert r.status_code == 202
    assert fuzz_worker.proc.wait(timeout=60) == 0
