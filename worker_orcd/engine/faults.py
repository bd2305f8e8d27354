"""Fault injection for tests: make chosen jobs meet an engine failure.

`WORKER_ORCD_FAULTS="decode=<prefix>,context=<prefix>"`: a job whose id starts
with the prefix gets a failing llama_decode (its 3rd call returns -3) or a
context that cannot be made. The plan is consulted once per job, so the token
loop carries no extra check, with or without faults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from worker_orcd.jobs.job import Job

ENV_VAR = "WORKER_ORCD_FAULTS"
FAILING_DECODE_CALL = 3
DECODE_FAILURE_STATUS = -3  # what llama_decode returns when the compute fails

Decode = Callable[..., int]


@dataclass(frozen=True, slots=True)
class FaultPlan:
    decode_prefix: str | None = None
    context_prefix: str | None = None

    @classmethod
    def from_env(cls, value: str | None = None) -> "FaultPlan":
        value = os.environ.get(ENV_VAR, "") if value is None else value
        fields: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in value.split(","))):
            kind, sep, prefix = entry.partition("=")
            if not sep or kind not in ("decode", "context") or not prefix:
                raise ValueError(f"{ENV_VAR}: expected decode=<prefix> or context=<prefix>, got {entry!r}")
            fields[f"{kind}_prefix"] = prefix
        return cls(**fields)

    def __bool__(self) -> bool:
        return self.decode_prefix is not None or self.context_prefix is not None

    def context_fails(self, job: Job) -> bool:
        return self.context_prefix is not None and job.job_id.startswith(self.context_prefix)

    def decode_for(self, job: Job, decode: Decode) -> Decode:
        if self.decode_prefix is None or not job.job_id.startswith(self.decode_prefix):
            return decode
        calls = 0

        def failing_decode(ctx: int, batch: object) -> int:
            nonlocal calls
            calls += 1
            if calls >= FAILING_DECODE_CALL:
                return DECODE_FAILURE_STATUS
            return decode(ctx, batch)

        return failing_decode
