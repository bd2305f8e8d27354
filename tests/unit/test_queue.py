"""JobQueue: the bounded FIFO in front of the inference thread (WO-JOB-4, WO-JOB-5)."""

from __future__ import annotations

import threading

import pytest

from tests.unit.helpers import make_job
from tests.support import wait_until
from worker_orcd.jobs.queue import JobQueue, QueueClosed, QueueFull


def _jobs(n: int, prefix: str = "q"):
    return [make_job(f"{prefix}-{i}")[0] for i in range(n)]


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
    got = []
    taker = threading.Thread(target=lambda: got.append(q.take()))
    taker.start()
    wait_until(lambda: q._idle_takers == 1)  # the taker is blocked, waiting for work
    q.put(a)  # runs at once: accepted even with no room to wait
    taker.join(timeout=5)
    assert got == [a]
    with pytest.raises(QueueFull):  # nobody idle now: b would have to wait
        q.put(b)


def test_take_blocks_until_put():
    q = JobQueue(4)
    job = _jobs(1)[0]
    taking = threading.Event()
    got = []

    def consumer() -> None:
        taking.set()
        got.append(q.take())

    t = threading.Thread(target=consumer)
    t.start()
    assert taking.wait(5)
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
    waiting = threading.Event()
    got = []

    def consumer() -> None:
        waiting.set()
        got.append(q.take())

    t = threading.Thread(target=consumer)
    t.start()
    assert waiting.wait(5)
    q.close()
    t.join(5)
    assert not t.is_alive() and got == [None]
