"""The parts of worker-orcd on Ray Serve that need no cluster: the job directory's rules,
the router's merges, the end of a relayed stream, the replicas' slots and the ledgers
they leave, and the settings (WO-RAY-*). None of them imports Ray."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.unit.test_early_cancels import Clock  # the directory's clock, moved by the test
from worker_orcd.jobs.job import Job, Sampling
from worker_orcd.jobs.ledger import Ledger
from worker_orcd.serve_ray import directory as directory_module
from worker_orcd.serve_ray.__main__ import build_parser, settings_from
from worker_orcd.serve_ray.directory import JobDirectory
from worker_orcd.serve_ray.merge import StreamEnd, merge_health, merge_jobs, merge_metrics
from worker_orcd.serve_ray.settings import ServeSettings
from worker_orcd.serve_ray.slots import find_in_orphans, list_in_orphans, lock_is_free, orphan_ledgers, take_slot


def run(coro):
    return asyncio.run(coro)


# -- the job directory ---------------------------------------------------------------------


def test_a_job_is_located_at_the_replica_that_bound_it():
    """WO-RAY-2: claim, bind, locate the owner; the owner's death leaves a fan-out."""

    async def scenario():
        d = JobDirectory()
        watchers = [
            asyncio.ensure_future(d.watch("r1", "http://a", "n", "s1")),
            asyncio.ensure_future(d.watch("r2", "http://b", "n", "s2")),
        ]
        await asyncio.sleep(0)
        assert await d.claim("t", "j") is True
        assert await d.claim("t", "j") is False  # the tenant's id is taken everywhere
        assert await d.claim("other", "j") is True  # ids are per tenant
        assert await d.bind("t", "j", "r1") is False
        found = await d.locate("t", "j")
        assert found["owner"] == ["r1", "http://a"]
        assert sorted(found["replicas"]) == [["r1", "http://a"], ["r2", "http://b"]]
        await d.suspect("r1")  # a forward failed twice: not an owner, still fanned out to
        found = await d.locate("t", "j")
        assert found["owner"] is None and found["owner_id"] == "r1"
        assert sorted(found["replicas"]) == [["r1", "http://a"], ["r2", "http://b"]]
        # Its next call shows it alive again.
        w = asyncio.ensure_future(d.watch("r1", "http://a", "n", "s1"))
        await asyncio.sleep(0)
        assert (await d.locate("t", "j"))["owner"] == ["r1", "http://a"]
        watchers.append(w)
        await d.ended("t", "j")
        assert await d.claim("t", "j") is False  # an ended job's id stays taken
        for w in watchers:
            w.cancel()

    run(scenario())


def test_a_cancel_before_the_bind_is_handed_to_the_binding_replica():
    """WO-RAY-3: a cancel for an id not yet bound (unknown, or claimed with its execute in
    Serve's queue) is marked; the replica that binds the job learns it."""

    async def scenario():
        d = JobDirectory()
        await d.locate("t", "early", for_cancel=True)  # before the execute
        assert await d.claim("t", "early") is True
        assert await d.bind("t", "early", "r1") is True
        assert await d.claim("t", "queued") is True
        await d.locate("t", "queued", for_cancel=True)  # while Serve holds the execute
        assert await d.bind("t", "queued", "r2") is True
        assert await d.claim("t", "plain") is True
        assert await d.bind("t", "plain", "r1") is False
        # A refused execute frees its id, and keeps a cancel that came for it.
        assert await d.claim("t", "refused") is True
        await d.locate("t", "refused", for_cancel=True)
        await d.release("t", "refused")
        assert await d.entry("t", "refused") is None
        assert await d.claim("t", "refused") is True
        assert await d.bind("t", "refused", "r1") is True

    run(scenario())


def test_a_cancel_mark_lasts_as_long_as_a_workers_early_cancel():
    async def scenario():
        clock = Clock()
        d = JobDirectory(cancel_mark_sec=60.0, clock=clock)
        await d.locate("t", "j", for_cancel=True)
        clock.now += 61.0
        assert await d.claim("t", "j") is True
        assert await d.bind("t", "j", "r1") is False

    run(scenario())


def test_a_flood_of_cancels_for_unknown_ids_evicts_neither_live_jobs_nor_other_tenants_marks(monkeypatch):
    """WO-RAY-13: live (claimed, bound) ids are never evicted; ended ones are remembered
    up to MAX_JOBS, the oldest forgotten first; cancel marks are bounded per tenant, as
    a worker bounds its early cancels (1,024)."""
    monkeypatch.setattr(directory_module, "MAX_JOBS", 8)

    async def scenario():
        d = JobDirectory()
        assert await d.claim("alice", "running") and not await d.bind("alice", "running", "r1")
        assert await d.claim("alice", "waiting")  # Serve holds its execute
        await d.locate("alice", "early", for_cancel=True)  # a cancel before its execute
        for n in range(10):
            assert await d.claim("alice", f"done-{n}") and not await d.bind("alice", f"done-{n}", "r1")
            await d.ended("alice", f"done-{n}")
        for n in range(2000):  # anyone may send these: bob's token, unknown ids
            await d.locate("bob", f"flood-{n}", for_cancel=True)
        # Alice's live ids and her mark survive the flood.
        assert await d.claim("alice", "running") is False
        assert (await d.locate("alice", "running"))["owner_id"] == "r1"
        assert await d.claim("alice", "waiting") is False
        assert await d.claim("alice", "early") is True and await d.bind("alice", "early", "r1") is True
        # The newest MAX_JOBS ended ids stay taken; older ones are free again.
        assert await d.claim("alice", "done-9") is False and await d.claim("alice", "done-2") is False
        assert await d.claim("alice", "done-1") is True
        # Bob's flood evicted only his own oldest marks.
        assert await d.claim("bob", "flood-1999") is True and await d.bind("bob", "flood-1999", "r1") is True
        assert await d.claim("bob", "flood-0") is True and await d.bind("bob", "flood-0", "r1") is False

    run(scenario())


def test_a_claim_lapses_only_when_its_router_stops_renewing_it():
    """WO-RAY-14: a claim whose router died (no renewal for CLAIM_SEC) frees its id, and a
    cancel that came for it is kept as a mark; a gone replica's bound jobs end, ids kept."""

    async def scenario():
        clock = Clock()
        d = JobDirectory(clock=clock)
        assert await d.claim("t", "held") and await d.claim("t", "orphan")
        await d.locate("t", "orphan", for_cancel=True)
        for _ in range(3):
            clock.now += directory_module.CLAIM_SEC * 0.9
            await d.renew("t", "held")
        assert await d.claim("t", "held") is False
        assert await d.claim("t", "orphan") is True and await d.bind("t", "orphan", "r1") is True
        w = asyncio.ensure_future(d.watch("r1", "http://a", "n", "s1"))
        await asyncio.sleep(0)
        assert await d.jobs_of("r1") == [["t", "orphan"]]
        await d.unregister("r1")
        assert await d.jobs_of("r1") == []
        assert (await d.entry("t", "orphan"))["state"] == "ended"
        assert await d.claim("t", "orphan") is False
        w.cancel()

    run(scenario())


def test_a_replica_that_leaves_serves_running_set_is_told_to_drain():
    """WO-RAY-7: a router's view of Serve's running replicas drops one: its watch returns
    "drain"; a view that never had it (a new router) drains nothing."""

    async def scenario():
        d = JobDirectory()
        w1 = asyncio.ensure_future(d.watch("r1", "http://a", "n", "s1"))
        w2 = asyncio.ensure_future(d.watch("r2", "http://b", "n", "s2"))
        await asyncio.sleep(0)
        assert await d.running("router-a", ["r1", "r2"]) == []
        assert await d.running("router-b", ["r1"]) == []  # a new view: nothing left it
        assert await d.running("router-a", ["r1"]) == ["r2"]
        assert await asyncio.wait_for(w2, 1) == "drain"
        assert not w1.done()
        states = {r["replica"]: r["state"] for r in await d.list_replicas()}
        assert states == {"r1": "live", "r2": "draining"}
        # Cancels and look-ups still reach a draining replica's worker.
        assert await d.claim("t", "j") and not await d.bind("t", "j", "r2")
        assert (await d.locate("t", "j"))["owner"] == ["r2", "http://b"]
        w1.cancel()

    run(scenario())


def test_a_replica_on_a_dead_ones_slot_replaces_it():
    async def scenario():
        d = JobDirectory()
        w = asyncio.ensure_future(d.watch("old", "http://a", "node", "/s/replica-0"))
        await asyncio.sleep(0)
        await d.suspect("old")
        w.cancel()
        w = asyncio.ensure_future(d.watch("new", "http://c", "node", "/s/replica-0"))
        await asyncio.sleep(0)
        assert [r["replica"] for r in await d.list_replicas()] == ["new"]
        w.cancel()

    run(scenario())


# -- merges ----------------------------------------------------------------------------------


def test_health_of_every_replica_as_the_caller_may_see_it():
    """WO-RAY-8"""
    full = {"status": "healthy", "ready": True, "queue_depth": 2, "busy": True, "active_job": None, "model": "m"}
    views = [
        ("r1", "live", full),
        ("r2", "live", {**full, "ready": False, "queue_depth": 1, "active_job": "mine"}),
        ("r3", "draining", {**full, "status": "unhealthy", "ready": False}),
    ]
    merged = merge_health(views)
    assert merged["status"] == "healthy" and merged["ready"] is True
    assert merged["queue_depth"] == 5 and merged["busy"] is True and merged["active_job"] == "mine"
    assert [r["replica"] for r in merged["replicas"]] == ["r1", "r2", "r3"]
    assert merge_health([("r1", "live", {"status": "healthy", "ready": False})]) == {"status": "healthy", "ready": False}
    assert merge_health([]) == {"status": "unhealthy", "ready": False}


def test_metrics_of_every_replica_labelled_by_replica():
    text = (
        "# HELP worker_requests_total Execute requests by outcome\n"
        "# TYPE worker_requests_total counter\n"
        'worker_requests_total{outcome="completed"} 3.0\n'
        "# HELP worker_stop_ms Stop\n"
        "# TYPE worker_stop_ms histogram\n"
        'worker_stop_ms_bucket{le="1.0"} 1.0\n'
        "worker_stop_ms_count 1.0\n"
        "worker_uptime_seconds 5\n"
    )
    merged = merge_metrics([("r1", text), ("r2", text)])
    lines = merged.splitlines()
    assert lines.count("# TYPE worker_requests_total counter") == 1
    assert 'worker_requests_total{replica="r1",outcome="completed"} 3.0' in lines
    assert 'worker_requests_total{replica="r2",outcome="completed"} 3.0' in lines
    assert 'worker_stop_ms_bucket{replica="r2",le="1.0"} 1.0' in lines
    assert 'worker_stop_ms_count{replica="r1"} 1.0' in lines
    # A family's samples stay under its HELP and TYPE.
    i = lines.index("# TYPE worker_stop_ms histogram")
    assert lines[i + 1 : i + 5] == [
        'worker_stop_ms_bucket{replica="r1",le="1.0"} 1.0',
        'worker_stop_ms_count{replica="r1"} 1.0',
        'worker_stop_ms_bucket{replica="r2",le="1.0"} 1.0',
        'worker_stop_ms_count{replica="r2"} 1.0',
    ]


def test_jobs_of_every_replica_newest_first():
    a = [{"job_id": "1", "queued_at": "2026-01-01T00:00:01.000Z"}, {"job_id": "3", "queued_at": "2026-01-01T00:00:03.000Z"}]
    b = [{"job_id": "2", "queued_at": "2026-01-01T00:00:02.000Z"}, {"job_id": "3", "queued_at": "old", "from": "ledger"}]
    merged = merge_jobs([a, b], limit=2)
    assert [j["job_id"] for j in merged] == ["3", "2"] and "from" not in merged[0]


@pytest.mark.parametrize("split", [1, 5, 13, 1000])
def test_a_relayed_stream_ends_with_one_terminal_event(split):
    """WO-RAY-9: the router's own `error` only for a stream that had none yet."""
    body = b'event: started\ndata: {}\n\nevent: token\ndata: {"t":"a","i":0}\n\nevent: end\ndata: {"stop_reason":"eos"}\n\n'
    watch = StreamEnd(openai=False)
    for i in range(0, len(body), split):
        watch.feed(body[i : i + split])
    assert watch.ended
    cut = StreamEnd(openai=False)
    cut.feed(body[:40])
    assert not cut.ended
    event = cut.failure("job-1").decode()
    name, data = event.strip().split("\n")
    assert name == "event: error"
    assert json.loads(data[len("data: ") :]) == {
        "code": "REPLICA_FAILED",
        "message": json.loads(data[len("data: ") :])["message"],
        "retriable": True,
        "job_id": "job-1",
    }
    oai = StreamEnd(openai=True)
    oai.feed(b'data: {"choices":[]}\n\ndata: [DO')
    assert not oai.ended
    oai.feed(b"NE]\n\n")
    assert oai.ended
    assert json.loads(StreamEnd(openai=True).failure(None)[len(b"data: ") :])["error"]["code"] == "REPLICA_FAILED"


# -- slots and the ledgers dead replicas leave -----------------------------------------------


def _running_job(ledger: Ledger, tenant: str, job_id: str) -> None:
    job = Job(job_id=job_id, prompt_tokens=[1, 2], sampling=Sampling(max_tokens=4, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=1), model="m", tenant=tenant)
    job.start()
    ledger.record(job)
    ledger.flush()


def test_a_replica_takes_the_lowest_free_slot_and_a_dead_ones_ledger_is_read_as_recovered(tmp_path: Path):
    """WO-RAY-9, WO-RAY-10"""
    first = take_slot(tmp_path)
    second = take_slot(tmp_path)
    assert (first.name, second.name) == ("replica-0", "replica-1")
    ledger = Ledger(second.path / "jobs.sqlite3")
    _running_job(ledger, "alice", "j1")
    ledger.close()
    assert list(orphan_ledgers(tmp_path)) == []  # its replica still holds the slot
    assert find_in_orphans(tmp_path, "alice", "j1") is None
    second.release()  # the replica died
    assert lock_is_free(second.path / "slot.lock")
    record = find_in_orphans(tmp_path, "alice", "j1")
    assert record["state"] == "failed" and record["error"]["code"] == "WORKER_RESTARTED"
    assert record["error"]["retriable"] is True and record["ended_at"]
    assert find_in_orphans(tmp_path, "bob", "j1") is None  # another tenant's
    assert [j["job_id"] for j in list_in_orphans(tmp_path, "alice", None, 10)] == ["j1"]
    assert list_in_orphans(tmp_path, "alice", "running", 10) == []
    assert [j["job_id"] for j in list_in_orphans(tmp_path, "alice", "failed", 10)] == ["j1"]
    # The next replica takes the dead one's slot, and its worker's start marks the job for real.
    third = take_slot(tmp_path)
    assert third.name == "replica-1"
    adopter = Ledger(third.path / "jobs.sqlite3")
    assert adopter.recovered == 1 and adopter.get("alice", "j1")["error"]["code"] == "WORKER_RESTARTED"
    adopter.close()
    with sqlite3.connect(third.path / "jobs.sqlite3") as conn:
        assert conn.execute("SELECT state FROM jobs").fetchall() == [("failed",)]
    for slot in (first, third):
        slot.release()


# -- settings --------------------------------------------------------------------------------


def test_settings_travel_as_a_dict_and_refuse_what_each_replica_sets():
    s = ServeSettings(replicas=2, threads=1, worker_args=("--api-key", "a=b", "--max-queue", "3"))
    assert ServeSettings.from_dict(s.to_dict()) == s
    assert s.max_queue == 3 and s.keyed and s.cpus_per_replica == 1.0
    assert s.serve_queue_limit == 6
    for flag in ("--port", "--state-dir", "--gpu-device", "--host", "--worker-id"):
        with pytest.raises(ValueError, match=flag):
            ServeSettings(worker_args=(flag, "1"))
    with pytest.raises(ValueError, match="not valid"):
        ServeSettings(worker_args=("--no-such-flag",))
    with pytest.raises(ValueError, match="unknown"):
        ServeSettings.from_dict({"replica": 2})


def test_the_local_command_reads_its_flags_and_the_workers():
    args = build_parser().parse_args(
        ["--min-replicas", "1", "--max-replicas", "3", "--threads", "1", "--", "--max-queue", "4"]
    )
    s = settings_from(args)
    assert s.replicas is None and (s.min_replicas, s.max_replicas) == (1, 3)
    assert s.worker_args == ("--max-queue", "4") and s.max_queue == 4
    fixed = settings_from(build_parser().parse_args(["--replicas", "3"]))
    assert fixed.replicas == 3
    with pytest.raises(ValueError):
        settings_from(build_parser().parse_args(["--replicas", "2", "--max-replicas", "3"]))


# -- the router, with a directory and workers of its own ----------------------------------


class _Done:
    """What a Ray actor method's `.remote()` returns, awaited or not (no warning if not)."""

    def __init__(self, value=None):
        self.value = value

    def __await__(self):
        return self.value
        yield  # noqa: unreachable; makes this a generator


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return _Done(self.fn(*args))


class FakeDirectory:
    def __init__(self, replicas, owner=None):
        self.replicas = replicas  # [(id, url)]
        self.owner = owner
        self.suspected: list[str] = []
        self.locate = _Method(lambda t, j, c=False: {"owner": self.owner, "replicas": [list(r) for r in self.replicas]})
        self.list_replicas = _Method(lambda: [{"replica": i, "url": u, "state": "live"} for i, u in self.replicas])
        self.suspect = _Method(self.suspected.append)
        self.claim = _Method(lambda t, j: True)
        self.release = _Method(lambda t, j: None)


def _router(monkeypatch, directory, handler, workers=None, settings: ServeSettings | None = None):
    from worker_orcd.serve_ray import router as router_module

    monkeypatch.setattr(router_module, "get_directory", lambda *a: directory)

    class Workers:
        def options(self, **_):
            return workers

    r = router_module.Router(Workers(), (settings or ServeSettings(replicas=2)).to_dict())
    r.http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return r


def _request(method: str, path: str, body: bytes = b"", headers: dict | None = None):
    from starlette.requests import Request

    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"", "headers": raw, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "scheme": "http"}
    return Request(scope, receive)


def test_a_cancel_whose_owner_refuses_is_fanned_out_and_none_reachable_is_503(monkeypatch):
    """WO-RAY-2, WO-RAY-12: a refused owner is tried twice, suspected, and the cancel goes
    to every other replica; with no replica reachable the answer is 503 REPLICA_UNAVAILABLE."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host + str(request.url.port))
        if request.url.port == 1:
            raise httpx.ConnectError("refused")
        assert request.headers["x-correlation-id"] == "cid-1"
        return httpx.Response(202, json={"status": "cancelling", "job_id": "j"})

    directory = FakeDirectory([("dead", "http://w:1"), ("live", "http://w:2")], owner=["dead", "http://w:1"])
    router = _router(monkeypatch, directory, handler)
    answer = asyncio.run(router(_request("POST", "/cancel", b'{"job_id": "j"}', {"X-Correlation-Id": "cid-1"})))
    assert answer.status_code == 202 and answer.headers["X-Cancel-Route"] == "fanout"
    assert "fanout;dur=" in answer.headers["Server-Timing"]
    assert calls == ["w1", "w1", "w2"] and directory.suspected == ["dead"]

    nobody = FakeDirectory([("dead", "http://w:1")])
    router = _router(monkeypatch, nobody, handler)
    answer = asyncio.run(router(_request("POST", "/cancel", b'{"job_id": "j"}')))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    body = json.loads(answer.body)
    assert body["error"]["code"] == "REPLICA_UNAVAILABLE"
    assert body["error"]["correlation_id"] == answer.headers["X-Correlation-Id"]


def test_a_full_serve_queue_is_503_worker_busy_and_shutdown_is_forbidden(monkeypatch):
    """WO-RAY-1, WO-RAY-12"""
    exceptions = pytest.importorskip("ray.serve.exceptions")

    class Stream:
        def __init__(self):
            self.cancelled = False

        async def __anext__(self):
            raise exceptions.BackPressureError(num_queued_requests=6, max_queued_requests=6)

        def cancel(self):
            self.cancelled = True

    class Workers:
        def remote(self, *args):
            return Stream()

    directory = FakeDirectory([("r", "http://w:2")])
    released: list = []
    directory.release = _Method(lambda t, j: released.append(j))
    router = _router(monkeypatch, directory, lambda r: httpx.Response(200), workers=Workers())
    answer = asyncio.run(router(_request("POST", "/execute", b'{"job_id": "j", "prompt": "x"}')))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert json.loads(answer.body)["error"]["code"] == "WORKER_BUSY"
    assert released == ["j"]  # nothing was queued: the id is free again
    answer = asyncio.run(router(_request("POST", "/shutdown")))
    assert answer.status_code == 403 and json.loads(answer.body)["error"]["code"] == "FORBIDDEN"


class LocalDirectory:
    """A real JobDirectory in the test's event loop, called as the router calls the actor."""

    def __init__(self, directory: JobDirectory | None = None) -> None:
        self.directory = directory or JobDirectory()
        self.calls: list[str] = []
        self.tasks: list[asyncio.Future] = []

    def __getattr__(self, name: str):
        method = getattr(self.directory, name)
        calls, tasks = self.calls, self.tasks

        class Remote:
            @staticmethod
            def remote(*args):
                calls.append(name)
                task = asyncio.ensure_future(method(*args))
                tasks.append(task)
                return task

        return Remote()

    async def settled(self) -> None:
        """Until every call sent so far (awaited or not) has run."""
        await asyncio.gather(*self.tasks)


class HeldStream:
    """A replica's stream that Serve holds in its queue until `first` is given."""

    def __init__(self, first=None, error: Exception | None = None) -> None:
        self.error = error
        self.first = first
        self.given = asyncio.Event()
        self.awaited = False
        self.cancelled = False
        if first is not None or error is not None:
            self.given.set()

    async def __anext__(self):
        self.awaited = True
        await self.given.wait()
        if self.error is not None:
            raise self.error
        return self.first

    def cancel(self):
        self.cancelled = True


class StreamOf:
    def __init__(self, stream):
        self.stream = stream

    def remote(self, *args):
        return self.stream


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_an_execute_that_reaches_no_worker_releases_its_claim(monkeypatch):
    """WO-RAY-14: the client leaves while Serve holds the execute, the replica fails before
    answering, the router fails: each frees the id.
    While Serve holds it, the router renews its claim."""
    pytest.importorskip("ray.serve.exceptions")  # the router tells Serve's own failures apart
    from worker_orcd.serve_ray import router as router_module

    body = b'{"job_id": "j", "prompt": "x"}'

    async def scenario():
        local = LocalDirectory()
        d = local.directory

        # Serve holds the execute; the client leaves.
        held = HeldStream()
        router = _router(monkeypatch, local, lambda r: httpx.Response(200), workers=StreamOf(held))
        call = asyncio.ensure_future(router(_request("POST", "/execute", body)))
        await _until(lambda: held.awaited)
        assert (await d.entry("", "j"))["state"] == "claimed"
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await local.settled()
        assert held.cancelled and await d.entry("", "j") is None

        # The replica fails before it answers.
        failed = HeldStream(error=RuntimeError("the replica's actor died"))
        router = _router(monkeypatch, local, lambda r: httpx.Response(200), workers=StreamOf(failed))
        answer = await router(_request("POST", "/execute", body))
        assert answer.status_code == 503 and json.loads(answer.body)["error"]["code"] == "REPLICA_FAILED"
        await local.settled()
        assert await d.entry("", "j") is None

        # The router fails on the replica's answer.
        broken = HeldStream(first={"unexpected": True})
        router = _router(monkeypatch, local, lambda r: httpx.Response(200), workers=StreamOf(broken))
        answer = await router(_request("POST", "/execute", body))
        assert answer.status_code == 500 and json.loads(answer.body)["error"]["code"] == "INTERNAL"
        await local.settled()
        assert broken.cancelled and await d.entry("", "j") is None

        # While Serve holds it, the claim is renewed; the execute then goes on as usual.
        monkeypatch.setattr(router_module, "CLAIM_RENEW_SEC", 0.01)
        held = HeldStream()
        router = _router(monkeypatch, local, lambda r: httpx.Response(200), workers=StreamOf(held))
        call = asyncio.ensure_future(router(_request("POST", "/execute", body)))
        await _until(lambda: "renew" in local.calls)
        held.first = {"status": 409, "headers": [], "replica": "r1", "url": "http://w:2", "job_id": "j"}
        held.given.set()
        assert (await call).status_code == 409 and not held.cancelled

    run(scenario())


def test_a_directory_that_restarted_empty_keeps_the_known_workers(monkeypatch):
    """WO-RAY-15: right after the directory restarts it lists no replica; cancels and
    look-ups still reach the workers last listed, until the replicas report again."""
    reached: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        reached.append(f"{request.url.port} {request.url.path}")
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "healthy", "ready": True})
        return httpx.Response(202, json={"status": "cancelling", "job_id": "j"})

    directory = FakeDirectory([("r1", "http://w:2")])
    router = _router(monkeypatch, directory, handler)

    async def scenario():
        assert (await router(_request("POST", "/cancel", b'{"job_id": "j"}'))).status_code == 202
        directory.replicas = []  # restarted: nothing registered yet
        answer = await router(_request("POST", "/cancel", b'{"job_id": "j"}'))
        assert answer.status_code == 202 and answer.headers["X-Cancel-Route"] == "fanout"
        assert json.loads((await router(_request("GET", "/health"))).body)["status"] == "healthy"
        assert reached == ["2 /cancel", "2 /cancel", "2 /health"]
        directory.replicas = [("r2", "http://w:3")]  # the replicas called again
        assert (await router(_request("POST", "/cancel", b'{"job_id": "j"}'))).status_code == 202
        assert reached[-1] == "3 /cancel"

    run(scenario())


def test_a_look_up_the_workers_refuse_reads_no_ledger(monkeypatch, tmp_path: Path):
    """WO-RAY-8, WO-AUTH-7: a dead replica's ledger answers only a caller the workers let
    in: their refusal (HOST_NOT_ALLOWED) is passed on, and with no worker reachable the
    answer is 503, not the ledger."""
    slot = take_slot(tmp_path)
    ledger = Ledger(slot.path / "jobs.sqlite3")
    _running_job(ledger, "", "j")
    ledger.close()
    slot.release()  # its replica died
    answers = {"status": 403}

    def handler(request: httpx.Request) -> httpx.Response:
        if answers["status"] == 0:
            raise httpx.ConnectError("refused")
        code = "HOST_NOT_ALLOWED" if answers["status"] == 403 else "JOB_NOT_FOUND"
        return httpx.Response(answers["status"], json={"error": {"code": code, "message": "m"}})

    directory = FakeDirectory([("r1", "http://w:2"), ("r2", "http://w:3")])
    router = _router(monkeypatch, directory, handler, settings=ServeSettings(replicas=2, state_base=str(tmp_path)))
    answer = asyncio.run(router(_request("GET", "/jobs/j", headers={"Host": "evil.example"})))
    assert answer.status_code == 403 and json.loads(answer.body)["error"]["code"] == "HOST_NOT_ALLOWED"
    assert "X-Job-Source" not in answer.headers
    answers["status"] = 0
    answer = asyncio.run(router(_request("GET", "/jobs/j")))
    assert answer.status_code == 503 and json.loads(answer.body)["error"]["code"] == "REPLICA_UNAVAILABLE"
    answers["status"] = 404
    answer = asyncio.run(router(_request("GET", "/jobs/j")))
    assert answer.status_code == 200 and answer.headers["X-Job-Source"] == "ledger"
    assert json.loads(answer.body)["error"]["code"] == "WORKER_RESTARTED"


def test_the_router_bounds_request_bodies_as_a_worker_does(monkeypatch):
    """WO-RAY-16, WO-LIMIT-1: a body over the workers' --max-body-bytes is a 413
    PAYLOAD_TOO_LARGE JSON error, said by Content-Length or counted as it arrives; nothing
    is claimed or sent on."""
    sent: list[str] = []

    class Workers:
        def remote(self, *args):
            sent.append("execute")
            return HeldStream(error=RuntimeError("not to be sent"))

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(202, json={"status": "cancelling", "job_id": "j"})

    local = LocalDirectory()
    settings = ServeSettings(replicas=2, worker_args=("--max-body-bytes", "1000"))
    router = _router(monkeypatch, local, handler, workers=Workers(), settings=settings)
    local.directory.replicas["r1"] = directory_module.Replica("r1", "http://w:2", "n", "s", time.monotonic())
    big = json.dumps({"job_id": "j", "prompt": "x" * 2000}).encode()

    async def scenario():
        for path, headers in [
            ("/execute", {"Content-Length": str(len(big))}),
            ("/execute", {}),
            ("/v1/completions", {}),
            ("/cancel", {}),
        ]:
            answer = await router(_request("POST", path, big, headers))
            assert answer.status_code == 413, (path, answer.body)
            error = json.loads(answer.body)["error"]
            assert error["code"] == "PAYLOAD_TOO_LARGE" and "1000 bytes" in error["message"]
            assert error["correlation_id"] == answer.headers["X-Correlation-Id"]
        await local.settled()
        assert sent == [] and "claim" not in local.calls
        # At the limit, a body goes through.
        padded = b'{"job_id": "j"}'.ljust(1000)
        assert (await router(_request("POST", "/cancel", padded))).status_code == 202
        assert sent == ["/cancel"]

    run(scenario())


def _streamed(status: int, body: dict, job_id: str) -> httpx.Response:
    """A worker's answer as the replica reads it: its bytes as they come."""
    return httpx.Response(status, headers={"x-request-id": job_id}, stream=httpx.ByteStream(json.dumps(body).encode()))


def _replica(local: LocalDirectory, handler):
    """A Worker replica's job relay, on a worker of the test's own (MockTransport)."""
    from worker_orcd.serve_ray.replica import WorkerReplica

    class Relay(WorkerReplica):
        def __del__(self) -> None:  # no worker process to stop
            pass

    replica = Relay.__new__(Relay)  # no worker process: its relay alone
    replica.replica_id, replica.url, replica.directory = "r1", "http://w:2", local
    replica.active, replica.idle = 0, asyncio.Event()
    replica.http = httpx.AsyncClient(base_url="http://w:2", transport=httpx.MockTransport(handler))
    return replica


def test_a_completion_not_streamed_owns_its_id_from_acceptance_to_retention():
    """WO-RAY-17, WO-JOB-3: a non-streamed completion (answered only at its end) is bound
    as its replica sends it, so a cancel finds its owner while it runs; one that ended with
    an error keeps its id; one its worker refused frees it."""

    async def relay(replica, job_id: str, body: dict) -> list:
        stream = replica.execute(
            "/v1/completions", "", [("x-request-id", job_id)], json.dumps(body).encode(), "", job_id, True
        )
        return [part async for part in stream]

    async def scenario():
        local = LocalDirectory()
        d = local.directory
        seen: dict[str, object] = {}
        ledger: set[str] = set()

        async def handler(request: httpx.Request) -> httpx.Response:
            if request.method == "GET":  # the replica asks whether its worker holds the id
                job_id = request.url.path.rsplit("/", 1)[1]
                return httpx.Response(200 if job_id in ledger else 404, json={})
            job_id = request.headers["x-request-id"]
            entry = await d.entry("", job_id)
            seen[job_id] = (entry["state"], entry["owner"])  # as the worker takes the job
            if job_id == "refused":
                return _streamed(429, {"error": {"code": "TENANT_BUSY"}}, job_id)
            ledger.add(job_id)
            if json.loads(request.content).get("stream"):
                return _streamed(200, {"choices": []}, job_id)
            return _streamed(499, {"error": {"code": "CANCELLED", "message": "Job cancelled by client request"}}, job_id)

        replica = _replica(local, handler)
        for job_id in ("cancelled", "refused"):
            assert await d.claim("", job_id)
            parts = await relay(replica, job_id, {"model": "m", "prompt": "x"})
            assert parts[0]["status"] in (499, 429)
        await local.settled()
        assert seen == {"cancelled": ("bound", "r1"), "refused": ("bound", "r1")}
        assert (await d.entry("", "cancelled"))["state"] == "ended"
        assert await d.claim("", "cancelled") is False  # the tenant's id, as on one worker
        assert await d.entry("", "refused") is None and await d.claim("", "refused") is True
        # A streamed completion is bound once its worker accepts it (its 200), not before.
        assert await d.claim("", "streamed")
        assert (await relay(replica, "streamed", {"model": "m", "prompt": "x", "stream": True}))[0]["status"] == 200
        await local.settled()
        assert seen["streamed"] == ("claimed", None)
        assert (await d.entry("", "streamed"))["state"] == "ended"

    run(scenario())
