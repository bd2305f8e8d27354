"""The job-id rule (WO-JOB-3), which X-Correlation-Id follows too (WO-CORR-1)."""

from __future__ import annotations

import re
from typing import TypeGuard

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_job_id(value: object) -> TypeGuard[str]:
    """Whether `value` is a well-formed job id (or correlation id)."""
    return isinstance(value, str) and JOB_ID_PATTERN.fullmatch(value) is not None
