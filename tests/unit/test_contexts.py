"""ContextPool without a model: llama.cpp's make/free replaced by fakes the test controls."""

from __future__ import annotations

import itertools
import threading

import pytest

from worker_orcd.engine import contexts
from worker_orcd.engine.contexts import ContextPool, ContextSettings


class FakeEngine:
    """Contexts are numbers; making one after the first waits until the test allows it."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.allow = threading.Semaphore(0)
        self.making = threading.Event()
        self.made: list[int] = []
        self.freed: list[int] = []
        self._first = True

    def new_context(self, model, settings) -> int:
        if not self._first:
            self.making.set()
            assert self.allow.acquire(timeout=30)
        self._first = False
        ctx = next(self._ids)
        self.made.append(ctx)
        return ctx

    def free_context(self, ctx: int) -> None:
        self.freed.append(ctx)


@pytest.fixture
def engine(monkeypatch):
    fake = FakeEngine()
    monkeypatch.setattr(contexts, "new_context", fake.new_context)
    monkeypatch.setattr(contexts, "free_context", fake.free_context)
    return fake


@pytest.fixture
def pool(engine):
    p = ContextPool(model=None, settings=ContextSettings(n_ctx=64, n_batch=16, n_threads=1))
    yield p
    engine.allow.release(10)  # let a helper that is still making one finish
    p.close()


def test_spare_is_ready_at_start_and_refilled(pool, engine):
    assert engine.made == [1]  # the idle footprint includes one spare
    assert pool.take() == 1
    assert engine.making.wait(10)  # the helper makes the next one at once
    engine.allow.release()
    assert pool.take() == 2
    pool.release(1)
    assert engine.freed == [1]


def test_cancelled_job_does_not_wait_for_the_spare(pool, engine):
    assert pool.take() == 1
    assert engine.making.wait(10)
    # The next spare is still being made; a cancelled job gets nothing, at once.
    assert pool.take(lambda: True) is None
    engine.allow.release()
    assert pool.take(lambda: False) == 2  # nothing was taken by the cancelled one


def test_cancel_while_waiting_for_the_spare(pool, engine):
    assert pool.take() == 1
    assert engine.making.wait(10)
    flag = threading.Event()
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.take(flag.is_set)))
    waiter.start()
    flag.set()  # the cancel arrives while it waits
    waiter.join(10)
    assert not waiter.is_alive() and got == [None]
    engine.allow.release()
    assert pool.take() == 2


def test_uncancelled_take_waits_for_the_spare(pool, engine):
    assert pool.take() == 1
    assert engine.making.wait(10)
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.take(lambda: False)))
    waiter.start()
    engine.allow.release()
    waiter.join(10)
    assert not waiter.is_alive() and got == [2]


def test_take_without_refill_leaves_the_spare_to_refill(pool, engine):
    assert pool.take(refill=False) == 1
    assert not engine.making.wait(0.2)  # nothing is made while the job evaluates its prompt
    pool.refill()  # the job's first token is out (or it ended)
    assert engine.making.wait(10)
    pool.refill()  # one is on its way: nothing more is asked for
    engine.allow.release()
    assert pool.take() == 2
    assert engine.made == [1, 2]
