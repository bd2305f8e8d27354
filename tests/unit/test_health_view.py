"""What GET /health tells each caller (WO-AUTH-6): nobody sees another tenant's job id."""

from __future__ import annotations

from types import SimpleNamespace

from testkit.jobs import make_job
from worker_orcd.api.health import Health, Slot
from worker_orcd.http import health as view
from worker_orcd.jobs.queue import JobQueue


def fake_worker(active=None, capacity: int = 2, status: str = "healthy", also=()):
    queue = JobQueue(capacity)
    running = [active, *also] if active else []

    def health():
        # Worker.health's record, the fields these tests read (ready: healthy, the engine up, room in the queue).
        return Health.model_construct(
            status=status,
            model="m.gguf",
            active_job=active.job_id if active else None,
            queue_depth=len(queue),
            active_jobs=[job.job_id for job in running],
            slots_busy=len(running),
            slots=[
                Slot(slot=i, job_id=job.job_id, phase="decode", tokens_out=i, kv_cells=40 + i)
                for i, job in enumerate(running)
            ],
            busy=active is not None,
            ready=status == "healthy" and queue.has_room(),
        ).owned({job.job_id: job.tenant for job in running})

    return SimpleNamespace(health=health, manager=SimpleNamespace(queue=queue))


def health_for(worker, tenant, operator) -> dict:
    return view.health_for(worker, tenant, operator).model_dump(exclude_unset=True)


def test_without_a_token_only_liveness_and_readiness():
    worker = fake_worker(make_job("alice-1", tenant="alice")[0])
    assert health_for(worker, None, False) == {"status": "healthy", "ready": True}
    assert health_for(fake_worker(status="unhealthy"), None, False) == {"status": "unhealthy", "ready": False}


def test_ready_says_whether_a_job_would_be_taken():
    worker = fake_worker(make_job("a")[0], capacity=1)
    assert health_for(worker, None, False)["ready"] is True
    worker.manager.queue.put(make_job("b")[0])
    assert health_for(worker, None, False)["ready"] is False  # the queue is full


def test_a_tenant_sees_only_its_own_running_job():
    worker = fake_worker(make_job("alice-1", tenant="alice")[0])
    alice = health_for(worker, "alice", False)
    assert alice["active_job"] == "alice-1" and alice["busy"] is True
    assert alice["model"] == "m.gguf" and alice["queue_depth"] == 0 and alice["ready"] is True
    bob = health_for(worker, "bob", False)
    assert bob["active_job"] is None and bob["busy"] is True
    assert "alice-1" not in repr(bob)


def test_operators_and_keyless_callers_see_everything():
    worker = fake_worker(make_job("alice-1", tenant="alice")[0])
    assert health_for(worker, "ops", True)["active_job"] == "alice-1"
    keyless = fake_worker(make_job("job-1")[0])
    for operator in (True, False):  # one tenant, "": every job is the caller's
        h = health_for(keyless, "", operator)
        assert h["active_job"] == "job-1" and h["busy"] is True
    idle = health_for(fake_worker(), "", False)
    assert idle["active_job"] is None and idle["busy"] is False


def test_with_slots_a_tenant_sees_only_its_own_running_jobs():
    """WO-SLOT-1: several jobs run at once; each caller is shown its own, and how many run."""
    alice, bob = make_job("alice-1", tenant="alice")[0], make_job("bob-1", tenant="bob")[0]
    worker = fake_worker(alice, also=[bob, make_job("alice-2", tenant="alice")[0]])
    seen = health_for(worker, "alice", False)
    assert seen["active_jobs"] == ["alice-1", "alice-2"] and seen["active_job"] == "alice-1"
    assert seen["slots_busy"] == 3 and "bob-1" not in repr(seen)
    assert [s["job_id"] for s in seen["slots"]] == ["alice-1", None, "alice-2"]
    assert health_for(worker, "bob", False)["active_jobs"] == ["bob-1"]
    assert health_for(worker, "ops", True)["active_jobs"] == ["alice-1", "bob-1", "alice-2"]
