"""ContextPool without a model: llama.cpp's make/free replaced by fakes the test controls."""

from __future__ import annotations

import itertools
import threading
from types import SimpleNamespace

import pytest

from worker_orcd.engine import contexts, devices
from worker_orcd.engine.contexts import ContextPool, ContextSettings

CPU_MODEL = SimpleNamespace(device=None)
SETTINGS = ContextSettings(n_ctx=64, n_batch=16, n_threads=1)


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
    p = ContextPool(model=CPU_MODEL, settings=SETTINGS)
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


def test_without_a_spare_each_job_makes_its_own(engine):
    """--spare-context off: the context that measured the cost is freed; the idle
    footprint is the model alone, and a job's context is made when it is taken."""
    p = ContextPool(model=CPU_MODEL, settings=SETTINGS, spare="off")
    try:
        assert engine.made == [1] and engine.freed == [1]
        assert not p.spare.enabled and p.spare.reason == "flag"
        engine.allow.release()
        assert p.take() == 2
        p.refill()  # nothing to refill
        assert engine.made == [1, 2]
    finally:
        p.close()
    assert engine.freed == [1]


def test_auto_keeps_the_spare_on_the_cpu(engine):
    p = ContextPool(model=CPU_MODEL, settings=SETTINGS, spare="auto")
    try:
        assert p.spare.enabled and p.spare.memory == "ram" and engine.freed == []
    finally:
        p.close()


def test_unknown_spare_mode_is_refused(engine):
    with pytest.raises(ValueError):
        ContextPool(model=CPU_MODEL, settings=SETTINGS, spare="maybe")


GPU = devices.Device(0, "cuda", "CUDA0", "GPU", "0000:01:00.0", 80 << 30, handle=1)


@pytest.mark.parametrize(
    "free, keep",
    [(64 << 30, True), (8 << 30, True), (7 << 30, False)],
)
def test_auto_on_a_gpu_keeps_the_spare_only_when_it_is_small(monkeypatch, free, keep):
    """A 1 GiB context is kept while it is at most an eighth of the GPU's free memory."""
    monkeypatch.setattr(devices, "free_memory", lambda device: free)
    cost = contexts._decide_spare("auto", 1 << 30, SimpleNamespace(device=GPU))
    assert cost.enabled is keep and cost.memory == "vram" and cost.bytes == 1 << 30


def test_on_and_off_are_obeyed_on_a_gpu(monkeypatch):
    monkeypatch.setattr(devices, "free_memory", lambda device: 1)
    model = SimpleNamespace(device=GPU)
    assert contexts._decide_spare("on", 1 << 30, model).enabled
    assert not contexts._decide_spare("off", 1, model).enabled
