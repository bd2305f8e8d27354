"""Waiting on a condition with a deadline: the one way tests and benchmarks synchronise."""

from __future__ import annotations

import time
from typing import Any, Callable


class NotInTime(AssertionError, TimeoutError):
    """A condition not met within its deadline: a test's failure, a benchmark's timeout."""


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy, and return that; raise NotInTime
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise NotInTime(f"{what or predicate}: condition not met within {timeout}s")
        time.sleep(interval)
