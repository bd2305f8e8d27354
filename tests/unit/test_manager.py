"""JobManager: submit, cancel and find, with stub sinks and no inference thread."""

from __future__ import annotations

import pytest

from testkit.jobs import completed, make_job
from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import JobState, Phase
from worker_orcd.jobs.manager import JobExists, JobManager
from worker_orcd.jobs.queue import JobQueue, QueueFull
from worker_orcd.jobs.registry import JobRegistry


def _manager(capacity: int = 4) -> JobManager:
    return JobManager(JobQueue(capacity), JobRegistry())


def test_submit_queues_and_registers():
    m = _manager()
    changes = []
    m.add_listener(lambda j: changes.append((j.job_id, j.state)))
    job, sink = make_job("m-1")
    m.submit(job)
    assert m.find("", "m-1") is job
    assert len(m.queue) == 1
    assert changes == [("m-1", JobState.QUEUED)]
    assert sink.events == []  # `started` comes from the inference thread, when it runs


def test_duplicate_is_refused_and_queue_unchanged():
    m = _manager()
    first, _ = make_job("dup")
    m.submit(first)
    with pytest.raises(JobExists):
        m.submit(make_job("dup")[0])
    assert len(m.queue) == 1 and m.find("", "dup") is first


def test_full_queue_keeps_nothing():
    m = _manager(capacity=1)
    m.submit(make_job("full-1")[0])
    with pytest.raises(QueueFull):
        m.submit(make_job("full-2")[0])
    assert m.find("", "full-2") is None  # not registered either: the id stays free
    assert len(m.queue) == 1


def test_cancel_queued_job_ends_it_at_once():
    m = _manager()
    ahead, ahead_sink = make_job("ahead")
    queued, sink = make_job("waiting")
    m.submit(ahead)
    m.submit(queued)
    assert m.cancel("", "waiting", CancelReason.CLIENT) is Phase.QUEUED
    assert queued.state is JobState.CANCELLED
    [event] = sink.events
    assert event.name == "error" and event.data["code"] == "CANCELLED" and event.data["tokens_out"] == 0
    # Out of line: the inference thread gets the job ahead, then nothing.
    assert len(m.queue) == 1 and m.queue.take() is ahead
    assert ahead.state is JobState.QUEUED and ahead_sink.events == []


def test_cancel_running_job_only_raises_the_flag():
    m = _manager()
    job, sink = make_job("running")
    m.submit(job)
    assert m.queue.take() is job and job.start()
    board = CancelBoard(1)
    job.cancel_flag.bind(board.address(0))  # as the dispatcher does when it sends the run
    assert m.cancel("", "running", CancelReason.CLIENT) is Phase.PROMPT
    assert job.cancel_flag.raised and job.cancel_flag.native_is_raised()
    assert job.state is JobState.RUNNING and sink.events == []  # the dispatcher emits CANCELLED


def test_cancel_twice_changes_nothing_after_the_first():
    m = _manager()
    job, sink = make_job("twice")
    m.submit(job)
    m.cancel("", "twice", CancelReason.CLIENT)
    snap = job.snapshot()
    assert m.cancel("", "twice", CancelReason.DISCONNECT) is Phase.FINISHED
    assert job.snapshot() == snap and len(sink.events) == 1


def test_cancel_unknown_and_finished():
    m = _manager()
    assert m.cancel("", "nobody", CancelReason.CLIENT) is None
    job, sink = make_job("done")
    m.submit(job)
    m.queue.take()
    job.start()
    job.finish(completed())
    assert m.cancel("", "done", CancelReason.CLIENT) is Phase.FINISHED
    assert job.state is JobState.COMPLETED and not job.cancel_requested
    assert [e.name for e in sink.events] == ["end"]


def test_cancel_is_scoped_to_the_tenant():
    m = _manager()
    job, sink = make_job("mine", tenant="alice")
    m.submit(job)
    assert m.cancel("bob", "mine", CancelReason.CLIENT) is None
    assert job.state is JobState.QUEUED and not job.cancel_requested and sink.events == []


def test_end_queued_fails_every_waiting_job():
    m = _manager()
    jobs = [make_job(f"w-{i}") for i in range(3)]
    for job, _ in jobs:
        m.submit(job)
    left = m.end_queued(CancelReason.SHUTDOWN)
    assert left == [j for j, _ in jobs]
    for job, sink in jobs:
        assert job.state is JobState.FAILED
        [event] = sink.events
        assert event.data["code"] == "WORKER_SHUTDOWN" and event.data["retriable"] is True
    assert m.queue.take() is None  # closed


def test_listeners_see_every_change():
    m = _manager()
    seen = []
    m.add_listener(lambda j: seen.append(j.state))
    job, _ = make_job("listened")
    m.submit(job)
    m.cancel("", "listened", CancelReason.CLIENT)
    assert seen[0] is JobState.QUEUED and seen[-1] is JobState.CANCELLED


def test_tenant_limit_counts_queued_and_running():
    """WO-LIMIT-2: at most max_jobs_per_tenant queued + running jobs per tenant."""
    from worker_orcd.jobs.manager import TenantBusy

    m = JobManager(JobQueue(8), JobRegistry(), max_jobs_per_tenant=2)
    a1, a2 = make_job("a1", tenant="a")[0], make_job("a2", tenant="a")[0]
    m.submit(a1)
    m.submit(a2)
    with pytest.raises(TenantBusy) as busy:
        m.submit(make_job("a3", tenant="a")[0])
    assert busy.value.limit == 2 and m.find("a", "a3") is None
    m.submit(make_job("b1", tenant="b")[0])  # another tenant still gets in
    assert m.open_jobs("a") == 2 and m.open_jobs("b") == 1
    # Running still counts; ended frees the place.
    assert m.queue.take() is a1 and a1.start()
    with pytest.raises(TenantBusy):
        m.submit(make_job("a3", tenant="a")[0])
    a1.finish(completed())
    m.cancel("a", "a2", CancelReason.CLIENT)
    assert m.open_jobs("a") == 0
    m.submit(make_job("a3", tenant="a")[0])
    assert m.open_jobs("a") == 1
