"""Nobody stops, reads or starves what is not theirs, against the real worker:
operators (WO-AUTH-4, WO-AUTH-5), /health per caller (WO-AUTH-6), the per-tenant
limit (WO-LIMIT-2), tenants served in turn (WO-JOB-6), and web pages: Host and
Origin checks and CORS (WO-AUTH-7, WO-AUTH-8)."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import httpx
import pytest

from testkit.prompts import CHAT
from testkit.streams import StreamThread, assert_error, cancel, job_of, terminal, uid, wait_idle
from testkit.waiting import wait_until
from testkit.wire import execute
from testkit.worker import WorkerProcess
from tests.e2e.helpers import ALICE, APP_ORIGIN, BOB, KEYED_MAX_QUEUE, OPS, queue_in_order, start_blocker

TENANT_LIMIT = (KEYED_MAX_QUEUE + 1) // 2  # the default with keys: half of the queue and the running job
PROMPT = CHAT.format("Say hello.")
EXIT_TIMEOUT = 60


def small_job(job_id: str) -> dict:
    # Several tokens: each job runs for milliseconds, so start times never tie.
    return {"job_id": job_id, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}


@pytest.fixture
def idle(keyed_worker):
    with keyed_worker.client(headers=OPS) as c:
        wait_idle(c)
    yield
    with keyed_worker.client(headers=OPS) as c:
        wait_idle(c)


def end_all(client: httpx.Client, blocker: StreamThread, streams: list[StreamThread]) -> None:
    cancel(client, blocker.job_id)
    assert terminal(blocker.join()).data["code"] == "CANCELLED"
    for s in streams:
        assert terminal(s.join()).name == "end"


# -- operators (WO-AUTH-4, WO-AUTH-5) ------------------------------------------------------


def test_a_tenant_cannot_stop_the_worker(keyed_worker):
    with keyed_worker.client(headers=BOB) as bob:
        r = bob.post("/shutdown", headers={"X-Correlation-Id": "stop-by-bob"})
        error = assert_error(r, 403, "FORBIDDEN")
        assert "operator" in error["message"]
        denied = keyed_worker.log.wait_for("shutdown_denied", correlation_id="stop-by-bob")
        assert denied["tenant"] == "bob"
        assert bob.get("/health").json()["status"] == "healthy"
    assert keyed_worker.proc.poll() is None
    assert keyed_worker.log.events("shutdown_requested") == []


def test_an_operator_stops_the_worker():
    keys_file = Path(tempfile.mkdtemp(prefix="worker-orcd-keys-")) / "keys"
    keys_file.write_text("carol=carol-token\nadmin night-ops=night-ops-token\n")
    w = WorkerProcess(args=["--threads", "1", "--api-keys-file", str(keys_file)]).start()
    try:
        with w.client() as c:
            assert_error(c.post("/shutdown", headers={"Authorization": "Bearer carol-token"}), 403, "FORBIDDEN")
            # The operator is a tenant too: its jobs are its own.
            ops = {"Authorization": "Bearer night-ops-token"}
            job_id = uid("ops-job")
            assert terminal(execute(c, small_job(job_id), headers=ops)).name == "end"
            assert c.get(f"/jobs/{job_id}", headers=ops).json()["state"] == "completed"
            assert_error(c.get(f"/jobs/{job_id}", headers={"Authorization": "Bearer carol-token"}), 404, "JOB_NOT_FOUND")
            r = c.post("/shutdown", headers=ops)
            assert r.status_code == 202 and r.json() == {"status": "shutting_down"}
        assert w.proc.wait(EXIT_TIMEOUT) == 0
    finally:
        w.kill()


def outside_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.254.254.254", 9))  # no packet is sent: this only picks the route
        address = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_without_keys_only_this_machine_stops_the_worker():
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    w = WorkerProcess(args=["--threads", "1", "--host", "0.0.0.0", "--allowed-host", address]).start()
    try:
        r = httpx.post(f"http://{address}:{w.port}/shutdown", timeout=30)
        error = assert_error(r, 403, "FORBIDDEN")
        assert "loopback" in error["message"]
        assert httpx.get(f"http://{address}:{w.port}/health", timeout=30).json()["status"] == "healthy"
        assert httpx.post(f"{w.url}/shutdown", timeout=30).status_code == 202
        assert w.proc.wait(EXIT_TIMEOUT) == 0
    finally:
        w.kill()


# -- /health per caller (WO-AUTH-6) -------------------------------------------------------


def test_health_shows_each_caller_only_what_is_theirs(keyed_worker, idle):
    w = keyed_worker
    with w.client(headers=ALICE) as alice, w.client(headers=BOB) as bob, w.client(headers=OPS) as ops:
        blocker = start_blocker(w, alice, ALICE)
        job_id = blocker.job_id
        with w.client() as anonymous:
            for headers in ({}, {"Authorization": "Bearer not-a-token"}):
                r = anonymous.get("/health", headers=headers)
                assert r.status_code == 200
                assert r.json() == {"status": "healthy", "ready": True}
        own = alice.get("/health").json()
        assert own["active_job"] == job_id and own["busy"] is True and own["ready"] is True
        assert own["model"] and own["queue_depth"] == 0
        other = bob.get("/health")
        assert other.json()["active_job"] is None and other.json()["busy"] is True
        assert job_id not in other.text
        assert job_id not in bob.get("/metrics").text
        assert ops.get("/health").json()["active_job"] == job_id
        end_all(alice, blocker, [])
        wait_until(lambda: bob.get("/health").json()["busy"] is False)


# -- the per-tenant limit (WO-LIMIT-2) ----------------------------------------------------


def test_a_tenant_at_its_limit_gets_429_while_another_gets_in(keyed_worker, idle):
    w = keyed_worker
    with w.client(headers=ALICE) as alice, w.client(headers=BOB) as bob:
        blocker = start_blocker(w, alice, ALICE)
        waiting = queue_in_order(w, [small_job(uid(f"limit-a{n}")) for n in range(TENANT_LIMIT - 1)], ALICE)

        refused = uid("limit-refused")
        r = alice.post("/execute", json=small_job(refused))
        error = assert_error(r, 429, "TENANT_BUSY")
        assert int(r.headers["Retry-After"]) >= 1 and str(TENANT_LIMIT) in error["message"]
        assert_error(alice.get(f"/jobs/{refused}"), 404, "JOB_NOT_FOUND")  # nothing was queued

        # Bob is not held up by Alice's share.
        waiting += queue_in_order(w, [small_job(uid("limit-b"))], BOB)
        end_all(alice, blocker, waiting)
        wait_idle(alice)
        # Her jobs ended, so she has room again.
        assert terminal(execute(alice, small_job(refused))).name == "end"


# -- tenants in turn (WO-JOB-6) -----------------------------------------------------------


def test_waiting_jobs_of_two_tenants_run_in_turn(keyed_worker, idle):
    w = keyed_worker
    with w.client(headers=ALICE) as alice, w.client(headers=BOB) as bob:
        blocker = start_blocker(w, alice, ALICE)
        a = [uid(f"turn-a{n}") for n in range(3)]
        b = [uid(f"turn-b{n}") for n in range(2)]
        # Alice queues all of hers before Bob queues any.
        streams = queue_in_order(w, [small_job(i) for i in a], ALICE)
        streams += queue_in_order(w, [small_job(i) for i in b], BOB)
        end_all(alice, blocker, streams)
        jobs = {i: job_of(alice, i) for i in a} | {i: job_of(bob, i) for i in b}

    ran = sorted(jobs, key=lambda i: jobs[i]["started_at"])
    assert ran == [a[0], b[0], a[1], b[1], a[2]]
    for prev, nxt in zip(ran, ran[1:]):  # one at a time
        assert jobs[prev]["ended_at"] <= jobs[nxt]["started_at"]


# -- web pages (WO-AUTH-7, WO-AUTH-8) ------------------------------------------------------


def test_a_foreign_page_cannot_submit_or_read(client, worker, worker_idle):
    job_id = uid("from-evil")
    r = client.post("/execute", json=small_job(job_id), headers={"Origin": "http://evil.example"})
    error = assert_error(r, 403, "ORIGIN_NOT_ALLOWED")
    assert "--allow-origin" in error["message"]
    assert "access-control-allow-origin" not in r.headers
    assert_error(client.get(f"/jobs/{job_id}"), 404, "JOB_NOT_FOUND")  # nothing was queued
    assert worker.log.events("job_queued", job_id=job_id) == []
    for origin in ("http://evil.example", "null"):
        assert_error(client.get("/jobs", headers={"Origin": origin}), 403, "ORIGIN_NOT_ALLOWED")
        assert_error(client.post("/cancel", json={"job_id": job_id}, headers={"Origin": origin}), 403, "ORIGIN_NOT_ALLOWED")


def test_same_origin_and_programs_get_in(client, worker, worker_idle):
    # A page served by the worker's own origin, and curl's -d (a form content type, no Origin).
    same = uid("same-origin")
    assert terminal(execute(client, small_job(same), headers={"Origin": worker.url})).name == "end"
    curl = uid("curl")
    body = f'{{"job_id": "{curl}", "prompt": "Hi", "max_tokens": 2}}'
    with client.stream(
        "POST", "/execute", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    ) as r:
        assert r.status_code == 200
        r.read()
    assert job_of(client, curl)["state"] == "completed"


def test_a_rebinding_page_is_refused_by_its_host(client, worker):
    # Served from evil.example, re-pointed at 127.0.0.1: same-origin for the browser.
    evil = {"Host": f"evil.example:{worker.port}", "Origin": f"http://evil.example:{worker.port}"}
    for path in ("/jobs", "/health"):
        error = assert_error(client.get(path, headers=evil), 403, "HOST_NOT_ALLOWED")
        assert "--allowed-host" in error["message"]
    assert_error(client.get("/jobs", headers={"Host": "evil.example"}), 403, "HOST_NOT_ALLOWED")
    for host in (f"127.0.0.1:{worker.port}", f"localhost:{worker.port}", "localhost"):
        assert client.get("/jobs", headers={"Host": host}).status_code == 200


def test_an_allowed_origin_gets_cors(keyed_worker, idle):
    w = keyed_worker
    with w.client() as c:
        preflight = c.options(
            "/execute",
            headers={
                "Origin": APP_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204  # no token needed: browsers send none with a preflight
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

        job_id = uid("cors")
        with c.stream("POST", "/execute", json=small_job(job_id), headers={**ALICE, "Origin": APP_ORIGIN}) as r:
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == APP_ORIGIN
            assert "X-Correlation-Id" in r.headers["access-control-expose-headers"]
            r.read()
        # Errors carry CORS too, so the page can read them.
        r = c.get("/jobs", headers={"Origin": APP_ORIGIN})
        assert_error(r, 401, "UNAUTHORIZED")
        assert r.headers["access-control-allow-origin"] == APP_ORIGIN

        assert_error(c.get("/jobs", headers={**ALICE, "Origin": "https://other.example"}), 403, "ORIGIN_NOT_ALLOWED")
        # With keys any Host is answered (a rebinding page has no token); the token still decides.
        assert c.get("/jobs", headers={**ALICE, "Host": "worker.example"}).status_code == 200
        assert_error(c.get("/jobs", headers={"Host": "worker.example"}), 401, "UNAUTHORIZED")
    with w.client(headers=ALICE) as alice:
        assert job_of(alice, job_id)["state"] == "completed"
