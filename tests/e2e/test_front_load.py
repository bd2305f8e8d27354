"""The front under load, on the real worker (specs/operating.md, "Limits": WO-LIMIT-3..6;
specs/contract.md, "Plain HTTP errors": WO-ERR-1, -2).

Clients that send half a request and wait, clients that stop reading their
stream, a cap of connections reached by either or by streams being answered, and
a quick run of bench.front_load (its full run is bench/RESULTS.md's). Raw sockets
where a well-behaved HTTP client cannot misbehave as these must.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from bench.front_load import FrontLoadConfig, request_bytes, run_front_load
from bench.harness.prompts import story
from testkit.streams import StreamThread, assert_error, cancel, job_of, uid, wait_job
from testkit.waiting import wait_until
from testkit.worker import WorkerProcess
from tests import raw_sockets
from tests.e2e.helpers import long_prompt_job
from tests.raw_sockets import as_response, read_response, read_to_end
from worker_orcd.http.openai.params import MAX_MESSAGES

READ_TIMEOUT = 1.0
STALL_TIMEOUT = 1.0
CAP = 16
HALF_HEADER = b"POST /execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Le"
SMALL_RCVBUF = 4096  # a client whose receive buffer is full after 4 KiB


@pytest.fixture(scope="module")
def front_worker(shared_worker):
    return shared_worker(
        "--threads", "1", "--max-queue", "4",
        "--read-timeout-sec", str(READ_TIMEOUT),
        "--stall-timeout-sec", str(STALL_TIMEOUT),
        "--max-connections", str(CAP),
    )  # fmt: skip


@pytest.fixture
def c(front_worker):
    with front_worker.client() as client:
        yield client
        health = client.get("/health").json()
        assert health["status"] == "healthy"


def connect(worker: WorkerProcess, data: bytes = b"", rcvbuf: int | None = None) -> socket.socket:
    return raw_sockets.connect(worker.port, data, rcvbuf)


# -- WO-LIMIT-3: the read deadline ---------------------------------------------------------


def test_a_half_sent_header_is_answered_408_and_closed(front_worker, c):
    started = time.monotonic()
    raw = read_to_end(connect(front_worker, HALF_HEADER))
    waited = time.monotonic() - started
    error = assert_error(as_response(raw), 408, "REQUEST_TIMEOUT")
    assert "--read-timeout-sec" in error["message"]
    assert b"connection: close" in raw.lower()
    assert waited >= READ_TIMEOUT * 0.9  # not before its deadline


def test_a_half_sent_body_is_answered_408_and_nothing_is_queued(front_worker, c):
    job_id = uid("half-body")
    body = json.dumps({"job_id": job_id, "prompt": "Hello", "max_tokens": 1}).encode()
    head = (
        "POST /execute HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Correlation-Id: corr-half-body\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    raw = read_to_end(connect(front_worker, head + body[:-5]))
    error = assert_error(as_response(raw), 408, "REQUEST_TIMEOUT")
    assert error["correlation_id"] == "corr-half-body"
    assert c.get(f"/jobs/{job_id}").status_code == 404
    # The route that was waiting for the body heard a disconnect: no internal error logged.
    assert not front_worker.log.events("http_internal_error")


def test_a_connection_that_sends_nothing_is_closed_without_a_word(front_worker, c):
    assert read_to_end(connect(front_worker)) == b""


def test_keep_alive_between_requests_is_as_before(front_worker, c):
    """The deadline runs while a request is being sent, not while a connection waits between
    requests: that is uvicorn's keep-alive (5 s), longer than this worker's read deadline."""
    s = connect(front_worker, request_bytes("GET", "/health"))
    assert read_response(s).status_code == 200
    time.sleep(READ_TIMEOUT * 2)  # the idle time under test, not a wait for something to happen
    s.sendall(request_bytes("GET", "/health"))
    assert read_response(s).status_code == 200
    s.close()


# -- WO-LIMIT-4: the connection cap -----------------------------------------------------------


def test_half_sent_connections_never_keep_a_cancel_out(front_worker, c):
    half = [connect(front_worker, HALF_HEADER) for _ in range(CAP + 4)]
    with front_worker.client() as fresh:  # a connection of its own, past the cap
        cancel(fresh, uid("at-cap"))
        assert fresh.get("/health").status_code == 200
    # The oldest made room for the newer ones and the cancel; each was told why.
    first = as_response(read_to_end(half[0]))
    assert_error(first, 503, "WORKER_BUSY")
    assert first.headers["retry-after"] == "1"
    for s in half:
        s.close()


@pytest.fixture
def capped_worker():
    w = WorkerProcess(args=["--threads", "1", "--max-queue", "4", "--max-connections", "3"]).start()
    yield w
    w.stop()


def test_at_a_cap_of_streams_a_cancel_still_gets_in(capped_worker):
    """Every connection is a stream being answered, so none can make room: POST /cancel
    (and GET /health) take a place kept for them; anything else is a 503 with Retry-After."""
    w = capped_worker
    running = StreamThread(w, long_prompt_job(uid("cap-run"))).start()
    queued = [StreamThread(w, long_prompt_job(uid("cap-queued"))).start() for _ in range(2)]
    for stream in (running, *queued):
        assert stream.opened.wait(60) and stream.status == 200
    with httpx.Client(base_url=w.url, timeout=30) as http:
        refused = http.get(f"/jobs/{queued[0].job_id}")
        assert_error(refused, 503, "WORKER_BUSY")
        assert refused.headers["retry-after"] == "1"
        assert http.get("/health").status_code == 200
        for stream in (*queued, running):
            cancel(http, stream.job_id)
    for stream in (running, *queued):
        events = stream.join()
        assert events[-1].name == "error" and events[-1].data["code"] == "CANCELLED"
    with w.client() as http:  # the streams gone, every request gets in again
        assert job_of(http, queued[0].job_id)["cancel_reason"] == "client"


# -- WO-LIMIT-5: a stream nobody reads -----------------------------------------------------------


def stalled_stream(worker: WorkerProcess, route: str, job_id: str) -> socket.socket:
    if route == "/execute":
        body = {"job_id": job_id, "prompt": story(7), "max_tokens": 2048, "temperature": 0}
        return connect(worker, request_bytes("POST", route, body), rcvbuf=SMALL_RCVBUF)
    body = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "stream": True, "max_tokens": 2048, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long, detailed story about a dragon who learns to bake bread."}],
    }  # fmt: skip
    return connect(worker, request_bytes("POST", route, body, {"X-Request-Id": job_id}), rcvbuf=SMALL_RCVBUF)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/execute"])
def test_a_stream_nobody_reads_is_cut_and_its_job_cancelled_as_a_disconnect(front_worker, c, route):
    job_id = uid("stalled")
    s = stalled_stream(front_worker, route, job_id)
    wait_until(lambda: c.get(f"/jobs/{job_id}").status_code == 200, timeout=30)  # accepted
    job = wait_job(c, job_id, "cancelled", timeout=180)
    assert job["cancel_reason"] == "disconnect" and job["error"]["code"] == "CANCELLED"
    assert 0 < job["tokens_out"] < 2048
    line = front_worker.log.wait_for("stalled_reader", path=route)
    assert line["correlation_id"] == front_worker.log.wait_for("job_queued", job_id=job_id)["correlation_id"]
    assert front_worker.log.wait_for("cancel_request", job_id=job_id)["reason"] == "disconnect"
    # Exactly one end: one `cancelled` line (logged just after the job's end), and the
    # ledger still says so later.
    front_worker.log.wait_for("cancelled", job_id=job_id)
    assert len(front_worker.log.events("cancelled", job_id=job_id)) == 1
    assert job_of(c, job_id)["state"] == "cancelled"
    # The worker reset the connection: what the client had is there, then the reset.
    with pytest.raises(ConnectionResetError):
        read_to_end(s)


# -- WO-LIMIT-6, WO-ERR-1, WO-ERR-2 ----------------------------------------------------------------


def test_a_chat_of_too_many_messages_is_400(front_worker, c):
    messages = [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)
    r = c.post("/v1/chat/completions", json={"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "messages": messages})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "array_above_max_length" and r.json()["error"]["param"] == "messages"


@pytest.mark.parametrize("limit", ["²", "١٢", "５", "2²"])
def test_a_count_that_is_not_ascii_digits_is_400(front_worker, c, limit):
    error = assert_error(c.get("/jobs", params={"limit": limit}), 400, "INVALID_REQUEST")
    assert error["details"][0]["field"] == "limit"


def test_a_content_length_that_is_not_ascii_digits_is_400(front_worker, c):
    raw = read_to_end(connect(front_worker, "POST /cancel HTTP/1.1\r\nHost: x\r\nContent-Length: ²\r\n\r\n".encode()))
    assert_error(as_response(raw), 400, "INVALID_REQUEST")


def test_what_is_not_http_is_a_json_400(front_worker, c):
    raw = read_to_end(connect(front_worker, b"\x16\x03\x01 not http at all\r\n\r\n"))
    assert_error(as_response(raw), 400, "INVALID_REQUEST")


# -- the quick run of the load test -----------------------------------------------------------------


def test_front_under_load_quick():
    """bench.front_load at its smallest: the same checks as the full run, none violated."""
    report = run_front_load(
        FrontLoadConfig(
            half_open=40, stalled_gets=10, stalled_streams=1, burst=12, max_queue=4, max_tokens=8,
            read_timeout_sec=1.0, stall_timeout_sec=1.0, max_connections=48, idle_probes=10,
        )  # fmt: skip
    )
    assert report["violations"] == dict.fromkeys(report["violations"], 0), report["notes"]
    # It exercised what it claims to.
    assert report["half_open"]["opened"] >= 40
    assert report["half_open"]["answers"].get("408 REQUEST_TIMEOUT", 0) > 0
    assert report["stalled_gets"]["reset"] == 10
    assert report["burst"]["accepted"] > 0 and report["burst"]["refusals"]
    assert report["under_load"]["cancel_ms"]["n"] > 0
