"""The value types the worker's bodies and records share, each with its JSON Schema.

Plain `str`, `int`, … to Python; to pydantic (the request models) and to the OpenAPI
document, with their rules: the job-id rule (WO-JOB-3), which X-Correlation-Id follows
too (WO-CORR-1), a job's states (WO-JOB-1), the timestamps every record carries.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from typing_extensions import TypeAliasType

JOB_STATES = ("queued", "running", "completed", "cancelled", "failed")
ID_RULE = {"min_length": 1, "max_length": 128, "pattern": r"^[A-Za-z0-9._:-]+$"}  # worker_orcd.api.ids

JobId = TypeAliasType(
    "JobId",
    Annotated[
        str,
        Field(
            **ID_RULE,
            description="1..128 characters of `[A-Za-z0-9._:-]`, unique per tenant on a worker (WO-JOB-3).",
        ),
    ],
)
CorrelationId = TypeAliasType("CorrelationId", Annotated[str, Field(**ID_RULE)])
JobState = TypeAliasType(
    "JobState",
    Annotated[
        Literal["queued", "running", "completed", "cancelled", "failed"],
        Field(description="queued→running→(completed|cancelled|failed); queued→(cancelled|failed) (WO-JOB-1)."),
    ],
)
Timestamp = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$",
        json_schema_extra={"format": "date-time"},
        description="RFC 3339 UTC with milliseconds, e.g. 2026-11-25T12:00:00.123Z.",
    ),
]
Count = Annotated[int, Field(ge=0)]
Milliseconds = Annotated[float, Field(ge=0)]
