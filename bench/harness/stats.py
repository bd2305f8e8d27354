"""Percentiles and summaries of samples (milliseconds, tokens/s, bytes)."""

from __future__ import annotations

import math
from typing import Iterable


def percentile(samples: Iterable[float], p: float) -> float | None:
    """The p-th percentile (0..100), linear between closest ranks; None without samples."""
    values = sorted(samples)
    if not values:
        return None
    rank = (len(values) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return values[lo] + (values[hi] - values[lo]) * (rank - lo)


def summary(samples: Iterable[float], digits: int = 3) -> dict[str, float | int | None]:
    """n, p50, p95, p99, mean, min and max of the samples."""
    values = [float(v) for v in samples]
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None, "min": None, "max": None}

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)

    return {
        "n": len(values),
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "mean": r(sum(values) / len(values)),
        "min": r(min(values)),
        "max": r(max(values)),
    }


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def difference(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None:
        return None
    return round(a - b, digits)
