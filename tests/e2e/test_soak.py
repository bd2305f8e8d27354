"""The short soak for CI (bench/soak.py; the 1,000-job figures are in bench/SOAK.md).

60 jobs from 4 concurrent clients that run to the end, cancel at random times,
cancel 2-3 times, hang up mid-stream and cancel while queued, against a worker
of its own. Every stream must have exactly one terminal event, GET /jobs/{id}
(in memory, then from the ledger) must agree with every stream, no job may be
left queued or running, the request counters must match, and resident memory
when idle must not grow.
"""

from __future__ import annotations

from bench.soak import SCENARIOS, SoakConfig, print_summary, run_soak


def test_short_soak():
    # One inference thread keeps the run quick when other processes load the cores.
    summary = run_soak(SoakConfig(jobs=60, clients=4, seed=7, worker_args=["--threads", "1"]))
    print_summary(summary)  # pytest shows it when the test fails

    assert summary["violations"] == dict.fromkeys(summary["violations"], 0)
    assert sum(summary["outcomes"].values()) == 60
    # The seed draws every scenario, and the run both completed and cancelled jobs:
    # it exercised what it claims to.
    assert set(summary["scenarios"]) == set(SCENARIOS)
    outcomes = summary["outcomes"]
    assert outcomes.get("completed", 0) > 0
    assert sum(v for k, v in outcomes.items() if k.startswith("cancelled")) > 0
    assert summary["rss_mib"]["idle_end"] is not None
