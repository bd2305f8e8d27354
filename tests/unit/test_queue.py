"""JobQueue: the bounded queue in front of the inference thread (WO-JOB-4, WO-JOB-5),
which serves tenants in turn (WO-JOB-6)."""

from __future__ import annotations

import threading

import pytest

from testkit.jobs import make_job
from testkit.waiting import wait_until
from worker_orcd.jobs.queue import JobQueue, QueueClosed, QueueFull


def _jobs(n: int, prefix: str = "q", tenant: str = ""):
    return [make_job(f"{prefix}-{i}", tenant=tenant)[0] for i in range(n)]


def blocked_taker(q: JobQueue) -> tuple[threading.Thread, list]:
    """A thread blocked in q.take(), waiting for work; what it takes lands in the list."""
    got: list = []
    taker = threading.Thread(target=lambda: got.append(q.take()), daemon=True)
    taker.start()
    wait_until(lambda: q._idle_takers == 1)
    return taker, got


def test_fifo_order():
    q = JobQueue(8)
    jobs = _jobs(5)
    for job in jobs:
        q.put(job)
    assert len(q) == 5
    assert [q.take() for _ in jobs] == jobs
    assert len(q) == 0


def test_full_queue_refuses_and_keeps_nothing():
    q = JobQueue(2)
    a, b, c = _jobs(3)
    q.put(a)
    q.put(b)
    with pytest.raises(QueueFull):
        q.put(c)
    assert len(q) == 2
    assert q.take() is a
    q.put(c)  # room again once one left
    assert [q.take(), q.take()] == [b, c]


def test_zero_capacity_refuses_when_no_taker_is_idle():
    q = JobQueue(0)
    with pytest.raises(QueueFull):
        q.put(_jobs(1)[0])


def test_a_job_for_an_idle_taker_does_not_count_against_capacity():
    q = JobQueue(0)
    a, b = _jobs(2)
    taker, got = blocked_taker(q)
    q.put(a)  # runs at once: accepted even with no room to wait
    taker.join(timeout=5)
    assert got == [a]
    with pytest.raises(QueueFull):  # nobody idle now: b would have to wait
        q.put(b)


def test_take_blocks_until_put():
    q = JobQueue(4)
    job = _jobs(1)[0]
    t, got = blocked_taker(q)
    assert got == []  # nothing to take yet: the consumer is waiting, not returning None
    q.put(job)
    t.join(5)
    assert not t.is_alive() and got == [job]


def test_remove_frees_capacity():
    q = JobQueue(2)
    a, b, c = _jobs(3)
    q.put(a)
    q.put(b)
    assert q.remove(a) is True
    assert q.remove(a) is False  # already out of line
    q.put(c)
    assert [q.take(), q.take()] == [b, c]


def test_close_hands_back_waiting_jobs_and_wakes_takers():
    q = JobQueue(4)
    jobs = _jobs(2)
    for job in jobs:
        q.put(job)
    assert q.close() == jobs
    assert len(q) == 0
    assert q.take() is None
    with pytest.raises(QueueClosed):
        q.put(_jobs(1, "late")[0])


def test_close_wakes_a_blocked_taker():
    q = JobQueue(1)
    t, got = blocked_taker(q)
    q.close()
    t.join(5)
    assert not t.is_alive() and got == [None]


# -- tenants in turn (WO-JOB-6) ----------------------------------------------------------


def _drain(q: JobQueue) -> list:
    return [q.take() for _ in range(len(q))]


def test_tenants_are_served_in_turn():
    q = JobQueue(16)
    a = _jobs(3, "a", tenant="alice")
    b = _jobs(2, "b", tenant="bob")
    c = _jobs(1, "c", tenant="carol")
    for job in [*a, *b, *c]:  # alice queued everything first
        q.put(job)
    assert len(q) == 6
    assert _drain(q) == [a[0], b[0], c[0], a[1], b[1], a[2]]
    assert len(q) == 0


def test_a_tenant_that_comes_back_joins_the_end_of_the_round():
    q = JobQueue(16)
    a = _jobs(3, "a", tenant="alice")
    b = _jobs(2, "b", tenant="bob")
    q.put(a[0])
    q.put(a[1])
    q.put(b[0])
    assert q.take() is a[0]  # the round is now bob, alice
    q.put(b[1])
    q.put(a[2])
    assert _drain(q) == [b[0], a[1], b[1], a[2]]
    # Bob's line emptied and he left the round; coming back, he is last again.
    c = _jobs(2, "c", tenant="carol")
    q.put(c[0])
    q.put(b[0])
    q.put(c[1])
    assert _drain(q) == [c[0], b[0], c[1]]


def test_capacity_counts_every_tenant():
    q = JobQueue(3)
    q.put(_jobs(1, "a", tenant="alice")[0])
    q.put(_jobs(1, "b", tenant="bob")[0])
    q.put(_jobs(1, "c", tenant="carol")[0])
    with pytest.raises(QueueFull):
        q.put(_jobs(1, "d", tenant="dave")[0])
    assert not q.has_room()
    q.take()
    assert q.has_room()


def test_remove_keeps_the_turns():
    q = JobQueue(16)
    a = _jobs(2, "a", tenant="alice")
    b = _jobs(2, "b", tenant="bob")
    c = _jobs(1, "c", tenant="carol")
    for job in [a[0], b[0], c[0], a[1], b[1]]:
        q.put(job)
    assert q.remove(b[0]) and q.remove(b[1])  # bob's line is gone, and his turn with it
    assert not q.remove(b[0])
    assert len(q) == 3
    assert _drain(q) == [a[0], c[0], a[1]]


def test_position_is_the_number_of_jobs_taken_first():
    q = JobQueue(16)
    a = _jobs(3, "a", tenant="alice")
    b = _jobs(1, "b", tenant="bob")
    c = _jobs(2, "c", tenant="carol")
    for job in [*a, *b, *c]:
        q.put(job)
    order = [a[0], b[0], c[0], a[1], c[1], a[2]]
    assert [q.position(job) for job in order] == list(range(6))
    assert q.position(_jobs(1, "x", tenant="alice")[0]) is None  # not waiting
    # Taking and removing keep the positions right; carol's next job keeps her turn.
    assert q.take() is a[0]
    assert q.remove(c[0])
    rest = [b[0], c[1], a[1], a[2]]
    assert [q.position(job) for job in rest] == list(range(4))
    assert _drain(q) == rest
    assert q.position(a[2]) is None


def test_close_hands_back_waiting_jobs_in_turn_order():
    q = JobQueue(8)
    a = _jobs(2, "a", tenant="alice")
    b = _jobs(1, "b", tenant="bob")
    for job in [*a, *b]:
        q.put(job)
    assert q.close() == [a[0], b[0], a[1]]
    assert len(q) == 0 and not q.has_room()
    assert q.take() is None
