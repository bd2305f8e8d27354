"""Fault injection for tests: make chosen jobs meet an engine failure.

`WORKER_ORCD_FAULTS="decode=<prefix>,context=<prefix>"`: a job whose id starts
with the prefix gets a failing llama_decode (its 3rd call returns -3) or a
context that cannot be made. The plan is consulted once per job, so the token
loop carries no extra check, with or without faults.

`cpu_probe=sigill` or `cpu_probe=hang`: the child that checks the engine's extra
CPU buffer types (engine.cpu_features) kills itself with SIGILL, or never
finishes, just before its decode: what a CPU that advertises instructions it
cannot run does to it, on any machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from worker_orcd.jobs.job import Job

ENV_VAR = "WORKER_ORCD_FAULTS"
FAILING_DECODE_CALL = 3
DECODE_FAILURE_STATUS = -3  # what llama_decode returns when the compute fails
CPU_PROBE_FAULTS = ("sigill", "hang")

Decode = Callable[..., int]


@dataclass(frozen=True, slots=True)
class FaultPlan:
    decode_prefix: str | None = None
    context_prefix: str | None = None
    cpu_probe: str | None = None  # sigill | hang

    @classmethod
    def from_env(cls, value: str | None = None) -> "FaultPlan":
        value = os.environ.get(ENV_VAR, "") if value is None else value
        fields: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in value.split(","))):
            kind, sep, arg = entry.partition("=")
            if sep and kind == "cpu_probe" and arg in CPU_PROBE_FAULTS:
                fields["cpu_probe"] = arg
                continue
            if not sep or kind not in ("decode", "context") or not arg:
                raise ValueError(
                    f"{ENV_VAR}: expected decode=<prefix>, context=<prefix> or "
                    f"cpu_probe={'|'.join(CPU_PROBE_FAULTS)}, got {entry!r}"
                )
            fields[f"{kind}_prefix"] = arg
        return cls(**fields)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.decode_prefix, self.context_prefix, self.cpu_probe))

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
