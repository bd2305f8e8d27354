"""Cancels that come before their job (WO-CANCEL-12): kept per tenant, for a while, in bounded number."""

from __future__ import annotations

from testkit.jobs import make_job
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.early_cancels import EarlyCancels
from worker_orcd.jobs.job import JobState
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobRegistry

T0 = "2026-11-29T10:00:00.000Z"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_kept_once_for_its_tenant_only():
    kept = EarlyCancels(60)
    kept.remember("alice", "j-1", CancelReason.CLIENT, T0)
    assert kept.take("bob", "j-1") is None
    found = kept.take("alice", "j-1")
    assert found is not None and found.reason is CancelReason.CLIENT and found.requested_at == T0
    assert kept.take("alice", "j-1") is None  # taken once
    assert len(kept) == 0


def test_forgotten_after_the_window():
    clock = Clock()
    kept = EarlyCancels(60, clock=clock)
    kept.remember("", "old", CancelReason.CLIENT, T0)
    clock.now += 30
    kept.remember("", "young", CancelReason.CLIENT, T0)
    clock.now += 30.001
    assert kept.take("", "old") is None
    assert kept.take("", "young") is not None


def test_bounded_in_count_oldest_forgotten_first():
    kept = EarlyCancels(60, max_per_tenant=3)
    for i in range(5):
        kept.remember("", f"j-{i}", CancelReason.CLIENT, T0)
    kept.remember("other", "j-0", CancelReason.CLIENT, T0)  # another tenant's share is its own
    assert len(kept) == 4
    assert [kept.take("", f"j-{i}") is not None for i in range(5)] == [False, False, True, True, True]
    assert kept.take("other", "j-0") is not None


def test_a_repeat_keeps_the_first_times():
    kept = EarlyCancels(60)
    kept.remember("", "j", CancelReason.CLIENT, T0)
    kept.remember("", "j", CancelReason.CLIENT, "2026-11-29T10:00:05.000Z")
    assert kept.take("", "j").requested_at == T0


def test_zero_window_keeps_nothing():
    kept = EarlyCancels(0)
    kept.remember("", "j", CancelReason.CLIENT, T0)
    assert len(kept) == 0 and kept.take("", "j") is None


def test_execute_after_its_cancel_ends_at_once_without_running():
    manager = JobManager(JobQueue(4), JobRegistry())
    changes = []
    manager.add_listener(lambda j: changes.append((j.state, j.cancel_requested_at)))
    assert manager.cancel("acme", "early", CancelReason.CLIENT) is None
    job, sink = make_job("early", tenant="acme")
    manager.submit(job)

    assert job.state is JobState.CANCELLED and job.started_at is None
    [event] = sink.events  # no `started`: the engine never saw it
    assert event.name == "error" and event.data["code"] == "CANCELLED"
    assert event.data["tokens_out"] == 0 and event.data["stop_ms"] == 0.0
    assert event.data["cancel_ms"] >= 0.0
    assert len(manager.queue) == 0 and manager.open_jobs("acme") == 0
    assert manager.find("acme", "early") is job  # its id is taken, GET /jobs finds it
    snap = job.snapshot()
    assert snap["cancel_reason"] == "client"
    # Both times: the cancel's (which came first) and the execute's.
    assert snap["cancel_requested_at"] <= snap["queued_at"] <= snap["ended_at"]
    assert changes[-1][0] is JobState.CANCELLED
    # The kept cancel was used up: the same id from another tenant runs normally.
    other, _ = make_job("early", tenant="zeta")
    manager.submit(other)
    assert other.state is JobState.QUEUED
