"""The thread governor (engine/threads.py) against step times a test chooses (WO-THREADS-1)."""

from __future__ import annotations

from worker_orcd.engine.threads import (
    Threads,
    LAST_TRIAL_SEC,
    TRIAL_STEPS,
    ThreadGovernor,
    candidates,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(governor: ThreadGovernor, clock: Clock, step_sec, steps: int) -> list[int]:
    """`steps` decodes, each taking step_sec(threads) seconds; the counts used."""
    used = []
    for _ in range(steps):
        n = governor.current
        used.append(n)
        took = step_sec(n)
        clock.now += took
        governor.observe(took)
    return used


def test_the_counts_compared():
    assert candidates(1) == (1,)
    assert candidates(2) == (2, 1)
    assert candidates(16) == (16, 15, 8, 1)


def test_a_fixed_count_never_moves():
    clock = Clock()
    governor = ThreadGovernor(4, fixed=True, clock=clock)
    assert set(run(governor, clock, lambda n: 0.5 if n == 4 else 0.001, 500)) == {4}


def test_the_faster_count_is_found_and_kept():
    clock = Clock()
    governor = ThreadGovernor(2, clock=clock)
    used = run(governor, clock, lambda n: 0.010 if n == 1 else 0.013, 2000)
    assert governor.current == 1
    assert used[-1000:].count(1) > 0.95 * 1000  # trials of 2 are rare once 1 is known better


def test_on_an_idle_machine_the_choice_holds_and_trials_thin_out():
    clock = Clock()
    governor = ThreadGovernor(2, clock=clock)
    run(governor, clock, lambda n: 0.008 if n == 2 else 0.012, 20_000)  # ~170 s of decoding
    assert governor.current == 2
    # Trials of the other count, each TRIAL_STEPS long, at most every LAST_TRIAL_SEC by now.
    tail = run(governor, clock, lambda n: 0.008 if n == 2 else 0.012, int(4 * LAST_TRIAL_SEC / 0.008))
    assert tail.count(1) <= 5 * TRIAL_STEPS


def test_a_busy_neighbour_moves_it_to_fewer_threads_at_the_second_slow_step_in_a_row():
    clock = Clock()
    governor = ThreadGovernor(2, clock=clock)
    idle = lambda n: 0.008 if n == 2 else 0.012  # noqa: E731
    run(governor, clock, idle, 3000)
    assert governor.current == 2 and "1" in governor.health()["step_ms"]
    # A neighbour takes a core: two threads wait for each other at every barrier.
    busy = lambda n: 0.400 if n == 2 else 0.013  # noqa: E731
    used = run(governor, clock, busy, 2000)
    assert used[:3] == [2, 2, 1]  # two slow steps, then off
    slow_steps = used.count(2)
    assert slow_steps <= 12, slow_steps  # later trials of 2 are each cut at their first step
    assert governor.current == 1
    # The neighbour goes: back to two threads within a few trials.
    used = run(governor, clock, idle, 6000)
    assert governor.current == 2 and used[-100:].count(2) >= 90


def test_one_slow_step_alone_is_a_hiccup_and_moves_nothing():
    """A step 10 times its usual (the engine's own spare context being made, a page-fault
    storm, the host taking the core for a moment) now and then: two threads stay."""
    clock = Clock()
    governor = ThreadGovernor(2, clock=clock)
    idle = lambda n: 0.008 if n == 2 else 0.012  # noqa: E731
    run(governor, clock, idle, 3000)
    assert governor.current == 2
    switches, smoothed = governor.switches, governor.smoothed[2]
    for _ in range(20):
        run(governor, clock, lambda n: 0.100, 1)  # the hiccup
        assert governor.current == 2
        run(governor, clock, idle, 50)
    assert governor.current == 2
    assert governor.switches - switches <= 4  # the timed trials only, no leave
    assert abs(governor.smoothed[2] - smoothed) < 0.001  # no hiccup in the smoothed time


def test_health_says_what_was_chosen_and_measured():
    clock = Clock()
    governor = ThreadGovernor(2, clock=clock)
    run(governor, clock, lambda n: 0.010, 400)
    h = governor.health()
    assert h["mode"] == "auto" and h["candidates"] == [2, 1] and h["current"] in (1, 2)
    assert set(h["step_ms"]) == {"1", "2"} and abs(h["step_ms"]["2"] - 10.0) < 0.5
    assert h["switches"] >= 2


def test_prompt_chunks_are_trialled_one_at_a_time():
    """A short prompt is a single chunk: each trial step is a whole job's first token."""
    clock = Clock()
    governor = Threads.choose(2, fixed=False, clock=clock).batch
    used = run(governor, clock, lambda n: 0.075 if n == 2 else 0.130, 400)  # ~30 s of prompts
    assert governor.current == 2
    assert used.count(1) <= 6, used.count(1)  # trials after 1, 2, 4, 8 and 16 s


def test_a_short_prompt_is_never_a_trial_of_fewer_threads_but_may_bring_them_back():
    """A short prompt is one chunk, its job's whole first token: trying one thread on it
    would double that job's time to first token. It is tried once, so that a collapse can
    be told; trials of more threads still run on short prompts."""
    clock = Clock()
    governor = Threads.choose(2, fixed=False, clock=clock).batch
    used = []
    for _ in range(400):  # ~30 s of short prompts on an idle machine
        used.append(governor.current)
        took = 0.075 if governor.current == 2 else 0.130
        clock.now += took
        governor.observe(took, try_fewer=False)
    assert used.count(1) == 1  # measured once, so a collapse can be told; never again
    # A neighbour takes a core: short prompts still, each collapsing at two threads.
    for _ in range(2):
        took = 0.900 if governor.current == 2 else 0.140
        clock.now += took
        governor.observe(took, try_fewer=False)
    assert governor.current == 1  # two collapsed prompts in a row
    for _ in range(200):  # it goes; short prompts only from now on
        took = 0.075 if governor.current == 2 else 0.130
        clock.now += took
        governor.observe(took, try_fewer=False)
    assert governor.current == 2
