"""WO-SLOT-8: how a step's prompt tokens are shared by the starting jobs (engine.slots._shares)."""

from __future__ import annotations

import pytest

from worker_orcd.engine.slots import _shares


@pytest.mark.parametrize(
    ("budget", "left", "expected"),
    [
        (4, [29, 29, 29, 29], [1, 1, 1, 1]),  # equal prompts: a quarter each
        (8, [29, 29], [4, 4]),
        (4, [1, 100], [1, 3]),  # one needs less than its share: the rest goes to the other
        (8, [100, 2, 3], [3, 2, 3]),  # the fewest left are served first
        (4, [10], [4]),
        (3, [10, 10], [2, 1]),  # an odd token goes to the first listed (the oldest)
        (2, [10, 10, 10], [1, 1, 0]),  # fewer tokens than jobs: the oldest first
        (5, [1, 1], [1, 1]),  # the budget need not be spent
        (5, [29, 29, 29, 29], [2, 1, 1, 1]),  # what does not divide goes to the most left, ties the oldest
        (5, [27, 28, 28, 28], [1, 2, 1, 1]),  # ... so it goes round over the steps
        (6, [10, 20, 30], [2, 2, 2]),
        (7, [10, 20, 30], [2, 2, 3]),
        (4, [], []),
    ],
)
def test_shares(budget, left, expected):
    shares = _shares(budget, left)
    assert shares == expected
    assert sum(shares) <= budget and all(0 <= s <= n for s, n in zip(shares, left, strict=True))


@pytest.mark.parametrize(("budget", "runs"), [(5, 4), (6, 4), (7, 4), (3, 2), (5, 3), (7, 8)])
def test_prompts_started_together_end_within_a_step_of_each_other(budget, runs):
    """Equal prompts sharing steps whose budget does not divide among them: the odd tokens
    go round, so no run finishes its prompt (and starts decoding ahead of the others) more
    than a step before the last."""
    left = [29] * runs
    finished: dict[int, int] = {}
    step = 0
    while len(finished) < runs:
        step += 1
        waiting = [i for i in range(runs) if i not in finished]
        for i, k in zip(waiting, _shares(budget, [left[i] for i in waiting]), strict=True):
            left[i] -= k
            if left[i] == 0:
                finished[i] = step
    assert max(finished.values()) - min(finished.values()) <= 1, finished
