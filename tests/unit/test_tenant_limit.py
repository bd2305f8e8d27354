"""The default per-tenant limit (WO-LIMIT-2): queued + running jobs of one tenant."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_orcd.config import WorkerConfig

KEYS = (("alice", "tok-a"),)


def config(**kwargs) -> WorkerConfig:
    return WorkerConfig(model_path=Path("m.gguf"), **kwargs)


@pytest.mark.parametrize("max_queue, limit", [(16, 8), (8, 4), (3, 2), (1, 1), (0, 1)])
def test_with_keys_a_tenant_gets_half_the_places(max_queue, limit):
    assert config(max_queue=max_queue, api_keys=KEYS).tenant_job_limit == limit
    assert config(max_queue=max_queue, admin_keys=KEYS).tenant_job_limit == limit


def test_without_keys_only_the_queue_bounds():
    assert config(max_queue=16).tenant_job_limit is None


def test_the_flag_overrides_and_zero_means_none():
    assert config(api_keys=KEYS, max_jobs_per_tenant=3).tenant_job_limit == 3
    assert config(max_jobs_per_tenant=3).tenant_job_limit == 3
    assert config(api_keys=KEYS, max_jobs_per_tenant=0).tenant_job_limit is None
