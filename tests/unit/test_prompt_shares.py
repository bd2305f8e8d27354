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
        (4, [], []),
    ],
)
def test_shares(budget, left, expected):
    shares = _shares(budget, left)
    assert shares == expected
    assert sum(shares) <= budget and all(0 <= s <= n for s, n in zip(shares, left, strict=True))
