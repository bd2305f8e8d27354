"""POST /execute on the real model: the stream, determinism, stop strings, ids (specs/contract.md)."""

from __future__ import annotations

import re
import time

import pytest

from testkit.prompts import LONG_ANSWER_PROMPT, SHORT_ANSWER, SHORT_PROMPT
from testkit.streams import (
    CORRELATION_HEADER,
    StreamThread,
    assert_error,
    assert_well_formed,
    cancel,
    job_of,
    terminal,
    uid,
)
from testkit.wire import execute, iter_events, text_of

pytestmark = pytest.mark.usefixtures("worker_idle")

STARTED_FIELDS = {"job_id", "model", "started_at", "seed", "prompt_tokens", "correlation_id"}
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_stream_to_end(client):
    job_id = uid("end")
    t0 = time.perf_counter()
    body = {"job_id": job_id, "prompt": SHORT_PROMPT, "max_tokens": 64, "temperature": 0}
    with client.stream("POST", "/execute", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(iter_events(r))
    wall_ms = (time.perf_counter() - t0) * 1000.0

    assert_well_formed(events)
    started, end = events[0], terminal(events)
    assert set(started.data) == STARTED_FIELDS
    assert started.data["job_id"] == job_id
    assert started.data["model"] == client.get("/health").json()["model"]
    assert RFC3339_MS.fullmatch(started.data["started_at"])
    assert isinstance(started.data["seed"], int) and 0 <= started.data["seed"] < 2**64

    # The chat template's special tokens were parsed (WO-EXEC-4): the model answers the question.
    assert text_of(events) == SHORT_ANSWER
    assert end.name == "end"
    assert set(end.data) == {"tokens_out", "decode_time_ms", "stop_reason"}
    assert end.data["stop_reason"] == "eos"
    tokens = [e for e in events if e.name == "token"]
    assert end.data["tokens_out"] >= len(tokens) > 0
    # WO-SSE-2: decode time is part of the request's wall time, and not nothing.
    assert 0 < end.data["decode_time_ms"] <= wall_ms

    job = job_of(client, job_id)
    assert job["state"] == "completed" and job["stop_reason"] == "eos"
    assert job["text"] == SHORT_ANSWER and job["tokens_out"] == end.data["tokens_out"]
    assert job["started_at"] == started.data["started_at"]
    assert job["error"] is None and job["cancel_requested"] is False
    assert job["queued_at"] <= job["started_at"] <= job["ended_at"]


def test_special_tokens_are_parsed(client):
    # Written as plain text, "<|im_start|><|im_end|>" would be a dozen tokens; as special
    # tokens it is two (SmolLM2 wants no BOS).
    events = execute(client, {"job_id": uid("special"), "prompt": "<|im_start|><|im_end|>", "max_tokens": 1})
    assert events[0].data["prompt_tokens"] == 2
    plain = execute(client, {"job_id": uid("plain"), "prompt": "<|im_start |><|im_end |>", "max_tokens": 1})
    assert plain[0].data["prompt_tokens"] > 4


def test_max_tokens_ends_the_stream(client):
    job_id = uid("max")
    events = execute(
        client, {"job_id": job_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 5, "temperature": 0}
    )
    assert_well_formed(events)
    end = terminal(events)
    assert end.name == "end" and end.data == {**end.data, "tokens_out": 5, "stop_reason": "max_tokens"}
    assert job_of(client, job_id)["text"] == text_of(events)


def test_duplicate_job_id_is_409(client, worker):
    job_id = uid("dup")
    body = {"job_id": job_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 200, "temperature": 0}
    stream = StreamThread(worker, body).start()
    stream.wait_tokens(1)
    # While it runs…
    assert_error(client.post("/execute", json={**body, "max_tokens": 1}), 409, "JOB_EXISTS")
    cancel(client, job_id)
    assert terminal(stream.join()).data["code"] == "CANCELLED"
    before = job_of(client, job_id)
    # …and after it ended, whatever the body.
    err = assert_error(client.post("/execute", json={"job_id": job_id, "prompt": "Hi"}), 409, "JOB_EXISTS")
    assert job_id in err["message"]
    assert job_of(client, job_id) == before  # the first job is untouched


def test_unknown_job_is_404(client):
    job_id = uid("never-submitted")
    err = assert_error(client.get(f"/jobs/{job_id}"), 404, "JOB_NOT_FOUND")
    assert job_id in err["message"]


def _tokens(client, body: dict) -> list[str]:
    events = execute(client, body)
    assert terminal(events).name == "end"
    return [e.data["t"] for e in events if e.name == "token"]


def test_same_seed_same_tokens(client):
    base = {"prompt": LONG_ANSWER_PROMPT, "max_tokens": 16}

    greedy = [_tokens(client, {**base, "job_id": uid("greedy"), "temperature": 0}) for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0]

    seed = 1234567
    sampled = [
        _tokens(client, {**base, "job_id": uid("seeded"), "temperature": 0.7, "seed": seed}) for _ in range(2)
    ]
    assert sampled[0] == sampled[1] and sampled[0]

    # WO-EXEC-5: the engine gets seed mod (2^32 - 1), so these two 64-bit seeds are the same seed.
    events = execute(
        client,
        {**base, "job_id": uid("seed64"), "temperature": 0.7, "seed": seed + (2**32 - 1)},
    )
    assert events[0].data["seed"] == seed + (2**32 - 1)  # reported as given
    assert [e.data["t"] for e in events if e.name == "token"] == sampled[0]

    # Top-k, top-p and a repetition penalty are deterministic under a seed too.
    knobs = {"temperature": 1.2, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.3, "seed": 2**64 - 1}
    runs = [_tokens(client, {**base, **knobs, "job_id": uid("knobs")}) for _ in range(2)]
    assert runs[0] == runs[1]


def test_seed_is_generated_and_reported(client):
    seeds = {
        execute(client, {"job_id": uid("gen-seed"), "prompt": "Hi", "max_tokens": 1})[0].data["seed"]
        for _ in range(2)
    }
    assert len(seeds) == 2  # a fresh 64-bit seed each time
    assert all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds)


def test_stop_string(client):
    body = {"prompt": SHORT_PROMPT, "max_tokens": 64, "temperature": 0}
    # The stop string and everything after it are never sent.
    job_id = uid("stop")
    events = execute(client, {**body, "job_id": job_id, "stop": ["Paris"]})
    end = terminal(events)
    assert end.name == "end" and end.data["stop_reason"] == "stop"
    assert text_of(events) == "The capital of France is "
    assert job_of(client, job_id)["text"] == "The capital of France is "
    assert job_of(client, job_id)["stop_reason"] == "stop"

    # One that spans several tokens, and starts mid-token.
    events = execute(client, {**body, "job_id": uid("stop-span"), "stop": ["pital of Fr", "never"]})
    assert terminal(events).data["stop_reason"] == "stop"
    assert text_of(events) == "The ca"

    # Held back text that never became a stop string is sent before the end.
    events = execute(client, {**body, "job_id": uid("stop-none"), "stop": ["Paris!", "zzz"]})
    assert terminal(events).data["stop_reason"] == "eos"
    assert text_of(events) == SHORT_ANSWER


def execute_with_correlation(client, job_id: str, correlation_id: str) -> tuple[str, list]:
    """A short job sent with this X-Correlation-Id: the one the response carries, and its events."""
    body = {"job_id": job_id, "prompt": "Hi", "max_tokens": 2}
    with client.stream("POST", "/execute", json=body, headers={CORRELATION_HEADER: correlation_id}) as r:
        return r.headers[CORRELATION_HEADER], list(iter_events(r))


def test_correlation_id(client, worker):
    # Taken from the request when well formed…
    cid = uid("corr:A.b_c")
    job_id = uid("corr")
    answered, events = execute_with_correlation(client, job_id, cid)
    assert answered == cid
    assert events[0].data["correlation_id"] == cid
    line = worker.log.wait_for("job_queued", job_id=job_id)
    assert line["correlation_id"] == cid and line["worker_id"] == "test-worker"
    # Every log line about the job carries it.
    for line in worker.log.lines:
        if line.get("job_id") == job_id:
            assert line.get("correlation_id") == cid, line

    # …otherwise made anew, and echoed on every kind of response.
    for bad in ("has space", "x" * 129, "", "semi;colon"):
        made, events = execute_with_correlation(client, uid("corr-bad"), bad)
        assert made != bad and re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", made)
        assert events[0].data["correlation_id"] == made
    generated = {client.get("/health").headers[CORRELATION_HEADER] for _ in range(3)}
    assert len(generated) == 3  # a new one per request

    assert client.get("/health", headers={CORRELATION_HEADER: cid}).headers[CORRELATION_HEADER] == cid
    r = client.get(f"/jobs/{uid('missing')}", headers={CORRELATION_HEADER: cid})
    assert assert_error(r, 404, "JOB_NOT_FOUND")["correlation_id"] == cid
    r = client.post("/cancel", json={"job_id": uid("nobody")}, headers={CORRELATION_HEADER: cid})
    assert r.status_code == 202 and r.headers[CORRELATION_HEADER] == cid
    r = client.post("/execute", content=b"{", headers={CORRELATION_HEADER: cid})
    assert assert_error(r, 400, "INVALID_REQUEST")["correlation_id"] == cid
