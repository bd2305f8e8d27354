"""Bearer tokens and tenants (WO-AUTH-1..3, WO-JOBS-2, WO-HEALTH-3)."""

from __future__ import annotations

import base64

import pytest

from testkit.prompts import CHAT
from testkit.streams import CORRELATION_HEADER, StreamThread, assert_error, cancel, job_of, terminal, uid
from testkit.wire import execute
from tests.e2e.helpers import ALICE, BOB, CAROL, TOKENS

PROMPT = CHAT.format("Count from one to twenty.")

# Every route but /health, with a body that would be valid if the caller were allowed.
PROTECTED = [
    ("POST", "/execute", {"job_id": "auth-probe", "prompt": PROMPT, "max_tokens": 2}),
    ("POST", "/cancel", {"job_id": "auth-probe"}),
    ("GET", "/jobs", None),
    ("GET", "/jobs/auth-probe", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("POST", "/shutdown", None),
    ("GET", "/no-such-route", None),
]


def job(job_id: str, max_tokens: int = 4) -> dict:
    return {"job_id": job_id, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}


@pytest.mark.parametrize("method, path, body", PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Bearer {TOKENS['alice'][:-1]}"},  # a prefix of a real token
        {"Authorization": "Basic " + base64.b64encode(f"alice:{TOKENS['alice']}".encode()).decode()},
        {"Authorization": TOKENS["alice"]},
    ],
    ids=["none", "wrong", "prefix", "basic", "no-scheme"],
)
def test_unauthorized_without_a_valid_token(keyed_worker, method, path, body, headers):
    with keyed_worker.client() as c:
        r = c.request(method, path, json=body, headers={**headers, CORRELATION_HEADER: "auth-corr-1"})
        error = assert_error(r, 401, "UNAUTHORIZED")
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert error["correlation_id"] == "auth-corr-1"
        # Nothing happened behind the 401: the worker is up and the probe job does not exist.
        assert c.get("/health").json()["status"] == "healthy"
        assert_error(c.get("/jobs/auth-probe", headers=ALICE), 404, "JOB_NOT_FOUND")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-token"}, ALICE], ids=["none", "wrong", "valid"])
def test_health_is_open(keyed_worker, headers):
    with keyed_worker.client() as c:
        r = c.get("/health", headers=headers)
        assert r.status_code == 200
        assert r.json()["status"] == "healthy"


@pytest.mark.parametrize("headers", [ALICE, BOB, CAROL], ids=["flag-1", "flag-2", "keys-file"])
def test_valid_tokens_are_accepted(keyed_worker, headers):
    with keyed_worker.client(headers=headers) as c:
        assert c.get("/jobs").status_code == 200
        assert c.get("/metrics").status_code == 200
        job_id = uid("auth-ok")
        assert terminal(execute(c, job(job_id))).name == "end"
        assert job_of(c, job_id)["state"] == "completed"
        # The scheme name is case-insensitive (RFC 7235).
        lower = {"Authorization": headers["Authorization"].replace("Bearer", "bearer")}
        assert c.get(f"/jobs/{job_id}", headers=lower).status_code == 200


def test_other_tenant_cannot_see_or_cancel(keyed_worker):
    job_id = uid("shared")
    # Long enough that Bob's cancel arrives while Alice's job runs.
    stream = StreamThread(keyed_worker, job(job_id, max_tokens=60), headers=ALICE).start()
    stream.wait_tokens(1)
    with keyed_worker.client(headers=BOB) as bob, keyed_worker.client(headers=ALICE) as alice:
        assert_error(bob.get(f"/jobs/{job_id}"), 404, "JOB_NOT_FOUND")
        cancel(bob, job_id)  # the usual 202, so the id leaks nothing ...
        denied = keyed_worker.log.wait_for("cancel_denied", job_id=job_id)
        assert denied["tenant"] == "bob" and denied["correlation_id"]

        end = terminal(stream.join())  # ... and no effect: Alice's job runs to its end
        assert end.name == "end" and end.data["stop_reason"] in ("max_tokens", "eos")
        record = job_of(alice, job_id)
        assert record["state"] == "completed" and record["cancel_requested"] is False
        assert_error(bob.get(f"/jobs/{job_id}"), 404, "JOB_NOT_FOUND")  # nor after it ended
        assert job_id not in [j["job_id"] for j in bob.get("/jobs").json()["jobs"]]

        # Bob's cancel was for his own id: like any cancel for an id he does not know, it
        # is kept for his execute (WO-CANCEL-12), whoever else uses the id, so this leaks
        # nothing either. His job with that id ends at once; Alice's stays as it ended.
        events = execute(bob, job(job_id, max_tokens=3))
        assert [e.name for e in events] == ["error"] and events[0].data["code"] == "CANCELLED"
        assert job_of(bob, job_id)["state"] == "cancelled"
        assert job_of(alice, job_id)["state"] == "completed"
        assert job_of(alice, job_id)["tokens_out"] == end.data["tokens_out"]
        assert [j["job_id"] for j in bob.get("/jobs").json()["jobs"]].count(job_id) == 1
        # Alice still cannot reuse her own id.
        assert_error(alice.post("/execute", json=job(job_id)), 409, "JOB_EXISTS")

        # Ids are per tenant: Bob may use one of Alice's, and each sees their own job.
        other = uid("shared")
        assert terminal(execute(alice, job(other, max_tokens=2))).name == "end"
        assert terminal(execute(bob, job(other, max_tokens=3))).name == "end"
        assert job_of(bob, other)["tokens_out"] == 3 and job_of(alice, other)["tokens_out"] == 2
        assert job_of(alice, other)["text"] != job_of(bob, other)["text"]


def test_other_tenant_cannot_cancel_a_queued_job(keyed_worker):
    running, queued = uid("alice-running"), uid("alice-queued")
    first = StreamThread(keyed_worker, job(running, max_tokens=40), headers=ALICE).start()
    first.wait_tokens(1)
    second = StreamThread(keyed_worker, job(queued, max_tokens=2), headers=ALICE).start()
    with keyed_worker.client(headers=BOB) as bob:
        keyed_worker.log.wait_for("job_queued", job_id=queued)
        cancel(bob, queued)
        keyed_worker.log.wait_for("cancel_denied", job_id=queued)
    assert terminal(first.join()).name == "end"
    assert terminal(second.join()).name == "end"


def test_auth_disabled_is_logged_without_keys(worker, keyed_worker):
    line = worker.log.wait_for("auth_disabled")
    assert line["host"] == "127.0.0.1"  # without keys, only this machine can reach it
    assert worker.log.wait_for("worker_ready")["host"] == "127.0.0.1"
    keyed_worker.log.wait_for("worker_ready")
    assert keyed_worker.log.events("auth_disabled") == []
