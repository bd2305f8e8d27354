"""worker-orcd on Ray Serve, through the one public address, against real workers (WO-RAY-*).

The tests share one local cluster (conftest.py); each starts from two settled
replicas. The scale test leaves two; the kill test, last, leaves two as well
(Serve replaces the killed replica).
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from typing import Any

import httpx
import pytest

from testkit.prompts import CHAT, LONG_ANSWER_PROMPT
from testkit.streams import StreamThread, cancel, terminal
from testkit.waiting import wait_until
from tests.ray.conftest import Cluster, import_ray

ray = import_ray()
if ray is None:
    pytest.skip('Ray Serve is not installed (pip install -e ".[test]" installs it)', allow_module_level=True)

# ~1,000 tokens of story at temperature 0 (no EOS before max_tokens): a job lasts
# seconds, far longer than any cancel below waits.
LONG_JOB = {"prompt": LONG_ANSWER_PROMPT, "max_tokens": 1024, "temperature": 0}
SHORT_PROMPT = CHAT.format("What is the capital of France?")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def long_job(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, **LONG_JOB}


def pause(seconds: float) -> None:
    """A cancel's random moment: the test chooses when to send it (not a synchronisation)."""
    threading.Event().wait(seconds)


def model_of(http: httpx.Client) -> str:
    models = http.get("/v1/models")
    assert models.status_code == 200, models.text  # the workers have the OpenAI routes
    return models.json()["data"][0]["id"]


def record(http: httpx.Client, job_id: str) -> dict[str, Any]:
    r = http.get(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_record(http: httpx.Client, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The job's record once it is terminal (the ledger's writer commits just after the event)."""
    return wait_until(
        lambda: (j := record(http, job_id))["state"] in ("completed", "cancelled", "failed") and j,
        timeout=timeout,
        interval=0.05,
    )


def ledger_rows(cluster: Cluster, tenant: str, job_id: str) -> list[dict[str, Any]]:
    """The job's rows in every replica ledger on this node, read straight from the files."""
    rows = []
    for ledger in sorted(cluster.state_base.glob("replica-*/jobs.sqlite3")):
        with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as conn:
            conn.row_factory = sqlite3.Row
            rows += [
                dict(r, ledger=ledger.parent.name)
                for r in conn.execute("SELECT * FROM jobs WHERE tenant = ? AND job_id = ?", (tenant, job_id))
            ]
    return rows


def assert_cancelled_everywhere(cluster: Cluster, http: httpx.Client, tenant: str, job_id: str, events) -> None:
    """One CANCELLED on the stream; the record (through the address) and the one ledger row agree."""
    end = terminal(events)
    assert end.name == "error" and end.data["code"] == "CANCELLED", (job_id, end.data)
    assert not any(e.name == "end" for e in events)
    rec = wait_record(http, job_id)
    assert rec["state"] == "cancelled" and rec["cancel_reason"] == "client", rec
    assert rec["tokens_out"] == end.data["tokens_out"], (rec, end.data)
    rows = wait_until(
        lambda: (r := ledger_rows(cluster, tenant, job_id)) and r[0]["state"] in ("completed", "cancelled", "failed") and r,
        timeout=10,
    )
    assert len(rows) == 1, rows  # one ledger holds the job
    assert rows[0]["state"] == "cancelled" and rows[0]["tokens_out"] == end.data["tokens_out"], rows


# -- the address answers as one worker -----------------------------------------------------


def test_one_address_answers_like_a_worker(cluster: Cluster):
    """WO-RAY-1, WO-RAY-8: /execute streams, /health and /metrics cover every replica,
    /jobs/{id} finds a job whichever replica ran it, a job id is taken across replicas."""
    replicas = cluster.settle(2)
    with cluster.client() as http:
        ids = [uid("hello") for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            streams = list(pool.map(lambda j: StreamThread(cluster.address(), {"job_id": j, "prompt": SHORT_PROMPT, "max_tokens": 16, "temperature": 0}).start().join(60), ids))
        for events in streams:
            assert events[0].name == "started" and terminal(events).name == "end"
        for job_id in ids:
            assert record(http, job_id)["state"] == "completed"
        # A job id is the tenant's across the application, whichever replica would take it.
        r = http.post("/execute", json={"job_id": ids[0], "prompt": SHORT_PROMPT})
        assert r.status_code == 409 and r.json()["error"]["code"] == "JOB_EXISTS"
        assert r.headers["X-Correlation-Id"] == r.json()["error"]["correlation_id"]

        health = http.get("/health").json()
        assert health["status"] == "healthy" and health["ready"] is True
        assert {r["replica"] for r in health["replicas"]} == replicas
        assert httpx.get(f"{cluster.url}/health").json().keys() == {"status", "ready"}  # anonymous

        metrics = http.get("/metrics").text
        for replica in replicas:
            assert f'worker_requests_total{{replica="{replica}",outcome="completed"}}' in metrics
        assert metrics.count("# TYPE worker_requests_total counter") == 1

        listed = http.get("/jobs", params={"limit": 1000}).json()["jobs"]
        assert set(ids) <= {j["job_id"] for j in listed}

        # A replica's worker is Serve's to stop.
        r = http.post("/shutdown")
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
        assert httpx.post(f"{cluster.url}/execute", json={"job_id": uid("x"), "prompt": "x"}).status_code == 401


def test_a_cancel_that_overtakes_its_execute_cancels_it(cluster: Cluster):
    """WO-RAY-3: a cancel for an id no replica knows yet is kept (directory and workers);
    the execute that follows ends CANCELLED without running."""
    cluster.settle(2)
    job_id = uid("early")
    with cluster.client() as http:
        r = cancel(http, job_id)
        assert r.headers["X-Cancel-Route"] == "fanout"
        events = StreamThread(cluster.address(), long_job(job_id)).start().join(60)
        assert [e.name for e in events] == ["error"] and events[0].data["code"] == "CANCELLED"
        assert wait_record(http, job_id)["state"] == "cancelled"


def test_openai_routes_through_serve(cluster: Cluster):
    """WO-RAY-1: the OpenAI routes through the address; the completion's id is the job id,
    so POST /cancel and GET /jobs/{id} take it through the address."""
    cluster.settle(2)
    with cluster.client() as http:
        model = model_of(http)
        job_id = uid("oai")
        chunks: list[str] = []
        got_some = threading.Event()

        def read() -> None:
            body = {"model": model, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 1024, "stream": True, "temperature": 0}
            with cluster.client() as h, h.stream("POST", "/v1/completions", json=body, headers={"X-Request-Id": job_id}) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        chunks.append(line[6:])
                        if len(chunks) >= 3:
                            got_some.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert got_some.wait(60)
        cancel(http, job_id)
        reader.join(60)
        last = json.loads(chunks[-1])
        assert last["error"]["code"] == "CANCELLED", chunks[-3:]
        assert wait_record(http, job_id)["state"] == "cancelled"


def test_a_completion_not_streamed_is_found_while_it_runs_and_keeps_its_id(cluster: Cluster):
    """WO-RAY-17, WO-JOB-3: a non-streamed completion, which its worker answers only at its
    end, is bound to its replica while it runs (its cancel goes to the owner), and once it
    ended with an error (CANCELLED) its id is still the tenant's: a repeat is a 409."""
    cluster.settle(2)
    job_id = uid("plain")
    answer: dict[str, httpx.Response] = {}
    with cluster.client() as http:
        body = {"model": model_of(http), "prompt": LONG_ANSWER_PROMPT, "max_tokens": 1024, "temperature": 0}

        def call() -> None:
            with cluster.client() as h:
                answer["r"] = h.post("/v1/completions", json=body, headers={"X-Request-Id": job_id})

        caller = threading.Thread(target=call)
        caller.start()
        entry = wait_until(lambda: (e := cluster.entry("alice", job_id)) and e["state"] == "bound" and e, timeout=30)
        wait_until(lambda: (r := http.get(f"/jobs/{job_id}")).status_code == 200 and r.json()["state"] == "running")
        r = cancel(http, job_id)
        assert r.headers["X-Cancel-Route"] == "owner", r.headers
        caller.join(60)
        assert answer["r"].status_code == 499 and answer["r"].json()["error"]["code"] == "CANCELLED", answer["r"].text
        assert wait_record(http, job_id)["state"] == "cancelled"
        ended = cluster.entry("alice", job_id)
        assert (ended["state"], ended["owner"]) == ("ended", entry["owner"]), ended
        again = http.post("/v1/completions", json={**body, "max_tokens": 4}, headers={"X-Request-Id": job_id})
        assert again.status_code == 409 and again.json()["error"]["code"] == "JOB_EXISTS", again.text


# -- tenants ---------------------------------------------------------------------------------


def test_a_tenant_sees_and_cancels_only_its_own_jobs(cluster: Cluster):
    """WO-RAY-5: another tenant's cancel is the usual 202 with no effect, its look-up a 404,
    whichever replica answers; the owner's cancel works."""
    cluster.settle(2)
    job_id = uid("mine")
    stream = StreamThread(cluster.address("alice"), long_job(job_id)).start()
    stream.wait_tokens(3)
    with cluster.client("bob") as bob, cluster.client("alice") as alice:
        r = cancel(bob, job_id)
        seen = sum(e.name == "token" for e in stream.events)
        stream.wait_tokens(seen + 5)  # a raised flag would have stopped it within milliseconds
        assert record(alice, job_id)["state"] == "running"
        r = bob.get(f"/jobs/{job_id}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "JOB_NOT_FOUND"
        assert job_id not in {j["job_id"] for j in bob.get("/jobs", params={"limit": 1000}).json()["jobs"]}
        # Bob may use the same id (ids are per tenant); his own cancel of it, sent before,
        # was kept for his execute (WO-CANCEL-12), which it ends at once.
        bob_events = StreamThread(cluster.address("bob"), {"job_id": job_id, "prompt": SHORT_PROMPT, "max_tokens": 4}).start().join(60)
        assert [e.name for e in bob_events] == ["error"] and bob_events[0].data["code"] == "CANCELLED"
        assert record(alice, job_id)["state"] == "running"
        cancel(alice, job_id)
        events = stream.join(60)
        assert terminal(events).data["code"] == "CANCELLED"
        assert wait_record(alice, job_id)["cancel_reason"] == "client"


def test_a_client_that_disconnects_through_the_proxy_cancels_its_job(cluster: Cluster):
    """WO-RAY-4: hanging up on Serve's proxy reaches the worker as a disconnect."""
    cluster.settle(2)
    job_id = uid("gone")
    with cluster.client() as http:
        with http.stream("POST", "/execute", json=long_job(job_id)) as r:
            assert r.status_code == 200
            tokens = 0
            for line in r.iter_lines():
                tokens += line == "event: token"
                if tokens == 3:
                    break
        # The connection is closed here, mid-stream.
        rec = wait_record(http, job_id)
        assert rec["state"] == "cancelled" and rec["cancel_reason"] == "disconnect", rec
        assert rec["tokens_out"] >= 3


# -- cancels by id ---------------------------------------------------------------------------


def test_twenty_jobs_each_cancelled_by_id_at_a_random_moment(cluster: Cluster):
    """WO-RAY-2, WO-RAY-3: 20 jobs through the address, four at a time over the two
    replicas, each cancelled by id at a random moment (before it reaches a worker, while
    queued, during its prompt or its decode): 20 CANCELLED, none completed, the records
    and the ledgers agree."""
    cluster.settle(2)
    rng = random.Random(20)
    jobs = [(uid("c20"), rng.uniform(0.0, 1.5)) for _ in range(20)]
    results: dict[str, Any] = {}
    routes: dict[str, tuple] = {}  # for the failure message: when each cancel went, how, how long

    def one(job: tuple[str, float]) -> None:
        job_id, moment = job
        stream = StreamThread(cluster.address(), long_job(job_id)).start()
        pause(moment)
        with cluster.client() as http:
            sent = time.monotonic()
            r = cancel(http, job_id)
            answered = time.monotonic() - sent
        routes[job_id] = (round(moment, 3), r.headers.get("X-Cancel-Route"), round(answered, 3))
        results[job_id] = stream.join(90)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, jobs))
    owners = set()
    with cluster.client() as http:
        for job_id, _ in jobs:
            try:
                assert_cancelled_everywhere(cluster, http, "alice", job_id, results[job_id])
            except AssertionError as exc:
                raise AssertionError(f"{exc}; cancel (moment, route, seconds to 202): {routes[job_id]}") from None
            owners.add((cluster.entry("alice", job_id) or {}).get("owner"))
    assert len(owners - {None}) == 2, owners  # both replicas took jobs


def test_cancels_reach_their_jobs_while_a_replica_is_added_and_one_removed(cluster: Cluster):
    """WO-RAY-6, WO-RAY-7: 20 jobs at once: Serve adds a third replica, which takes jobs
    Serve held. Cancels at random moments empty the other two; with less load Serve
    removes the third (the newest) while its jobs still run and wait. Its cancels still
    reach them on the leaving replica; the jobs nobody cancels end with the worker's own
    drain (`WORKER_SHUTDOWN`) once the replica's drain time is over; then it leaves.
    Every cancel reaches its job, or came after the job had ended (its end event read
    before the cancel was sent) and the record says completed. Every stream has one
    terminal event and every record agrees, those of the removed replica read from the
    ledger it left."""
    before = cluster.settle(2)
    rng = random.Random(7)
    ids = [uid("scale") for _ in range(20)]
    streams = {j: StreamThread(cluster.address(), long_job(j)).start() for j in ids}
    sent_at: dict[str, float] = {}  # when each job's cancel left (perf_counter, as event stamps)

    def owner(job_id: str) -> str | None:
        return (cluster.entry("alice", job_id) or {}).get("owner")

    def cancel_now(http: httpx.Client, job_id: str) -> httpx.Response:
        sent_at[job_id] = time.perf_counter()
        return cancel(http, job_id)

    with cluster.client() as http, _cancelled_on_failure(http, ids, streams):
        # Two workers take 8 jobs; Serve holds the others, unbound, until a replica has
        # room. A cancel for one of those is fanned out and marked in the directory (when
        # Serve dispatches the job first, it goes to the owner: either way it must end it).
        waiting = wait_until(
            lambda: (w := [j for j in ids if (cluster.entry("alice", j) or {}).get("state") == "claimed"]) and w,
            timeout=60,
            interval=0.1,
        )[-1]
        cancel_now(http, waiting)
        third = wait_until(lambda: cluster.live() - before, timeout=120, interval=0.2).pop()
        wait_until(lambda: len(cluster.jobs_of(third)) >= 2, timeout=60, interval=0.2)
        # Cancel the jobs the first two replicas hold or will hold (Serve dispatches its
        # waiting ones to them as they free up), at random moments.
        while True:
            others = [j for j in ids if j not in sent_at and owner(j) != third]
            if not others:
                break
            job_id = rng.choice(others)
            pause(rng.uniform(0.0, 0.3))
            cancel_now(http, job_id)
        # Serve removes the newest replica; the directory tells it to drain.
        wait_until(
            lambda: any(r["replica"] == third and r["state"] == "draining" for r in cluster.replicas()),
            timeout=90,
            interval=0.2,
        )
        held = {j: record(http, j)["state"] for _, j in cluster.jobs_of(third)}
        queued = [j for j, state in held.items() if state == "queued"]
        assert len(queued) >= 2, f"the leaving replica should still run one job and queue others: {held}"
        # Its running job and one queued are cancelled by id; the others are left to the drain.
        by_drain = queued[1:]
        for job_id in [j for j in held if j not in by_drain]:
            pause(rng.uniform(0.0, 0.5))
            r = cancel_now(http, job_id)
            assert r.headers["X-Cancel-Route"] in ("cached", "owner"), r.headers
        assert set(sent_at) | set(by_drain) == set(ids)
        results = {j: s.join(90) for j, s in streams.items()}
        # The third replica leaves once its streams ended; two remain.
        cluster.settle(2)
        assert third not in cluster.live()
        for job_id in sent_at:
            end = terminal(results[job_id])
            if end.name == "end":  # it ended before its cancel was sent
                assert end.at < sent_at[job_id], (job_id, end.data)
                assert wait_record(http, job_id)["state"] == "completed"
            else:
                assert_cancelled_everywhere(cluster, http, "alice", job_id, results[job_id])
        for job_id in by_drain:
            end = terminal(results[job_id])
            assert end.name == "error" and end.data["code"] == "WORKER_SHUTDOWN" and end.data["retriable"], end.data
            cancel(http, job_id)  # after its end: a 202 that changes nothing
            rec = wait_record(http, job_id)
            assert rec["state"] == "failed" and rec["error"]["code"] == "WORKER_SHUTDOWN", rec
            rows = ledger_rows(cluster, "alice", job_id)
            assert len(rows) == 1 and rows[0]["error_code"] == "WORKER_SHUTDOWN", rows
        for job_id in held:  # answered from the ledger the removed replica left
            assert http.get(f"/jobs/{job_id}").headers.get("X-Job-Source") == "ledger"


@contextmanager
def _cancelled_on_failure(http: httpx.Client, ids: list[str], streams: dict[str, StreamThread]):
    """A test that fails leaves no job running into the next test."""
    try:
        yield
    except BaseException:
        for job_id in ids:
            try:
                http.post("/cancel", json={"job_id": job_id})
            except httpx.HTTPError:
                pass
        for stream in streams.values():
            stream.done.wait(30)
        raise


# -- a replica that dies ---------------------------------------------------------------------


def test_a_replica_killed_mid_job(cluster: Cluster):
    """WO-RAY-9: the stream ends with one `error` REPLICA_FAILED; the job's record reads
    failed / WORKER_RESTARTED from the ledger the dead replica left, and the same once a
    new replica has taken its slot over; a later cancel changes nothing."""
    cluster.settle(2)
    job_id = uid("killed")
    stream = StreamThread(cluster.address(), long_job(job_id)).start()
    stream.wait_tokens(3)
    victim = cluster.entry("alice", job_id)["owner"]
    ray.kill(cluster.replica_actor(victim), no_restart=True)
    events = stream.join(30)
    end = terminal(events)
    assert end.name == "error" and end.data["code"] == "REPLICA_FAILED" and end.data["retriable"] is True
    with cluster.client() as http:
        rec = wait_record(http, job_id)
        assert rec["state"] == "failed" and rec["error"]["code"] == "WORKER_RESTARTED", rec
        cancel(http, job_id)
        replicas = cluster.settle(2)
        assert victim not in replicas
        rec2 = wait_record(http, job_id)
        assert rec2["state"] == "failed" and rec2["error"]["code"] == "WORKER_RESTARTED", rec2
        rows = ledger_rows(cluster, "alice", job_id)
        assert len(rows) == 1 and rows[0]["state"] == "failed" and rows[0]["error_code"] == "WORKER_RESTARTED", rows
