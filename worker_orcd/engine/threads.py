"""How many threads llama.cpp computes with, chosen by timing its own decodes.

llama.cpp's CPU threads meet at a barrier after every graph node, hundreds of
times a token. When another process holds one of the cores they run on, the
thread that shares it waits for its turn at each barrier while the others wait
for it, and a token that took milliseconds takes a large part of a second. One
thread fewer than the cores gone avoids that; on an idle machine the same model
may still be faster with every core, or not (the front needs a core too, and a
small model gains little from more threads). So the engine measures instead of
guessing: it keeps a smoothed decode time for each of a few thread counts, uses
the fastest, leaves a count when two decodes in a row turn several times slower
than the best one known (one such step alone is a hiccup: a page-fault storm, a
moment of the host's), and now and then tries another count for a few steps,
less often each time the trial confirms the choice.

One governor chooses for single-token decodes (`n_threads`), another for prompt
chunks (`n_threads_batch`, timed per token). A fixed `--threads N` turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

SMOOTHING = 0.2  # weight of a new sample in a count's smoothed step time
COLLAPSE = 4.0  # two steps in a row this many times the best known count's time: leave
DRIFT = 1.5  # a smoothed time this many times another count's: move to that one
TRIAL_STEPS = 6  # single-token decodes a trial of another count lasts
BATCH_TRIAL_STEPS = 1  # prompt chunks: a short prompt is one chunk, the whole of a job's first token
BATCH_TRIAL_MIN_CHUNKS = 4  # fewer threads are tried only on a prompt this long: a trial costs it at most a quarter
FIRST_TRIAL_SEC = 1.0  # the first trial after a change; doubled each time a trial confirms
LAST_TRIAL_SEC = 30.0


def candidates(most: int) -> tuple[int, ...]:
    """The thread counts worth comparing: all, one fewer (a core taken), half, one."""
    return tuple(sorted({n for n in (most, most - 1, most // 2, 1) if n >= 1}, reverse=True))


@dataclass
class ThreadGovernor:
    most: int
    fixed: bool = False
    trial_steps: int = TRIAL_STEPS
    skip_first: bool = True  # whether a step right after a switch is left out of the times
    current: int = 0
    smoothed: dict[int, float] = field(default_factory=dict)  # seconds per step (per token for prompts)
    switches: int = 0
    _counts: tuple[int, ...] = ()
    _skip: bool = False  # the first step after a switch is not a fair sample
    _suspect: bool = False  # the last step collapsed: one more and the count is left
    _trial_from: int | None = None  # the count a trial will return to unless it wins
    _trial_left: int = 0
    _trial_gap: float = FIRST_TRIAL_SEC
    _next_trial: float = 0.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._counts = (self.most,) if self.fixed else candidates(self.most)
        self.current = self.most
        self._next_trial = self.clock() + self._trial_gap

    def observe(self, seconds: float, try_fewer: bool = True) -> int:
        """A step took `seconds` at the current count: the count for the next step.

        `try_fewer=False`: no trial of fewer threads starts on the next step (it would
        cost the step more than it can tell), unless that count was never measured; a
        trial of more threads still may."""
        if self.fixed:
            return self.current
        n = self.current
        best = self._best(exclude=n)
        if best is not None and best < n and seconds > COLLAPSE * self.smoothed[best]:
            if self._suspect or self._trial_from is not None:  # a trial is cut at its first
                self._suspect = False
                self.smoothed[n] = seconds  # what this count costs now, not what it cost before
                return self._leave(best)  # collapsing beside a busy neighbour
            self._suspect = True  # once is a hiccup, and no sample either
            return n
        self._suspect = False
        if self._skip:  # the first step after a switch pays for the change: no sample
            self._skip = False
        else:
            known = self.smoothed.get(n)
            self.smoothed[n] = seconds if known is None else known + SMOOTHING * (seconds - known)
            if best is not None and self._trial_from is None and self.smoothed[n] > DRIFT * self.smoothed[best]:
                return self._leave(best)  # slower for a while than another count was
        if self._trial_left:
            self._trial_left -= 1
            return n if self._trial_left else self._end_trial()
        if self.clock() >= self._next_trial:
            return self._start_trial(try_fewer)
        return n

    def health(self) -> dict:
        return {
            "mode": "fixed" if self.fixed else "auto",
            "current": self.current,
            "candidates": list(self._counts),
            "step_ms": {str(n): round(s * 1000, 3) for n, s in sorted(self.smoothed.items())},
            "switches": self.switches,
        }

    # -- choosing --------------------------------------------------------------------

    def _best(self, exclude: int | None = None) -> int | None:
        measured = [n for n in self._counts if n in self.smoothed and n != exclude]
        return min(measured, key=self.smoothed.__getitem__) if measured else None

    def _switch(self, n: int) -> int:
        if n != self.current:
            self.current = n
            self.switches += 1
            self._skip = self.skip_first
            self._suspect = False  # a slow step counts against its own count only
        return n

    def _leave(self, n: int) -> int:
        """To `n` at once: a trial that failed waits twice as long for the next one; a choice
        that went bad is checked again soon."""
        failed_trial = self._trial_from is not None
        self._trial_from = None
        self._trial_left = 0
        self._trial_gap = min(LAST_TRIAL_SEC, self._trial_gap * 2) if failed_trial else FIRST_TRIAL_SEC
        self._next_trial = self.clock() + self._trial_gap
        return self._switch(n)

    def _start_trial(self, try_fewer: bool = True) -> int:
        others = [n for n in self._counts if n != self.current]
        if not others:
            self._next_trial = float("inf")
            return self.current
        # The count measured longest ago is worth a fresh look: unmeasured ones first.
        untried = [n for n in others if n not in self.smoothed]
        pick = untried[0] if untried else min(others, key=lambda n: abs(n - self.current))
        if pick < self.current and not try_fewer and pick in self.smoothed:
            return self.current  # known once (to see a collapse by): the next step that may, retries it
        self._trial_from = self.current
        self._trial_left = self.trial_steps
        self.smoothed.pop(pick, None)  # measured afresh: the machine may have changed since
        return self._switch(pick)

    def _end_trial(self) -> int:
        back = self._trial_from
        self._trial_from = None
        best = self._best()
        assert best is not None and back is not None
        if best == self.current and best != back:
            self._trial_gap = FIRST_TRIAL_SEC  # the trial won: look again soon
        else:
            best = back
            self._trial_gap = min(LAST_TRIAL_SEC, self._trial_gap * 2)
        self._next_trial = self.clock() + self._trial_gap
        return self._switch(best)


@dataclass
class Threads:
    """The engine's two choices: threads per single-token decode and per prompt chunk."""

    decode: ThreadGovernor
    batch: ThreadGovernor

    @classmethod
    def choose(cls, most: int, *, fixed: bool, clock: Callable[[], float] = time.monotonic) -> Threads:
        # A chunk is long enough that a switch's cost is lost in it, and too long to trial many.
        batch = ThreadGovernor(most, fixed=fixed, trial_steps=BATCH_TRIAL_STEPS, skip_first=False, clock=clock)
        return cls(ThreadGovernor(most, fixed=fixed, clock=clock), batch)

    def health(self) -> dict:
        return {"decode": self.decode.health(), "batch": self.batch.health()}
