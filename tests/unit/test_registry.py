"""JobRegistry: jobs in memory, keyed per tenant (WO-JOB-3)."""

from __future__ import annotations

import pytest

from testkit.jobs import completed, make_job
from worker_orcd.jobs.registry import JobExists, JobRegistry


def test_add_get_and_duplicates():
    reg = JobRegistry()
    job, _ = make_job("r-1")
    reg.add(job)
    assert reg.get("", "r-1") is job
    assert reg.get("", "r-2") is None
    with pytest.raises(JobExists):
        reg.add(make_job("r-1")[0])
    assert reg.get("", "r-1") is job  # the first stays


def test_ids_are_scoped_per_tenant():
    reg = JobRegistry()
    a, _ = make_job("same", tenant="alice")
    b, _ = make_job("same", tenant="bob")
    reg.add(a)
    reg.add(b)
    assert reg.get("alice", "same") is a
    assert reg.get("bob", "same") is b
    assert reg.get("", "same") is None


def test_discard_only_removes_that_job():
    reg = JobRegistry()
    job, _ = make_job("d-1")
    other, _ = make_job("d-1")  # same key, different object
    reg.add(job)
    reg.discard(other)
    assert reg.get("", "d-1") is job
    reg.discard(job)
    assert reg.get("", "d-1") is None
    reg.add(other)  # the id is free again
    assert reg.get("", "d-1") is other


def test_eviction_drops_oldest_finished_only():
    reg = JobRegistry(keep_finished=2)
    running = []
    for i in range(3):
        job, _ = make_job(f"live-{i}")
        job.start()
        reg.add(job)
        running.append(job)
    finished = []
    for i in range(4):
        job, _ = make_job(f"done-{i}")
        job.start()
        job.finish(completed())
        reg.add(job)
        finished.append(job)
    # Unfinished jobs are never evicted; of the finished, the newest are kept.
    for job in running:
        assert reg.get("", job.job_id) is job
    kept = [j for j in finished if reg.get("", j.job_id) is j]
    assert kept == finished[-2:]
