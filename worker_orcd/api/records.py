"""A job's record, as `GET /jobs/{id}` and `GET /jobs` show it, declared once.

`JobRecord` is the declaration: its fields, in the order the JSON has them. A record
is built from a live job (`from_job`) or from a ledger row (`from_row`; `summary_from_row`
for a listing's `JobSummary`), and a job
is written to the ledger as the row `row_of` makes (by column name, never by place); the ledger's columns
(`COLUMNS`) are derived from the declaration: each field a column of its name,
but `cancel_requested` (its time says it), `error` (three columns) and the facts no
record shows (`tenant`, `correlation_id`, `prompt_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, NotRequired, Protocol

from pydantic import ConfigDict, Field, WithJsonSchema, with_config
from typing_extensions import TypedDict

from worker_orcd.api.fields import Count, JobId, JobState, Milliseconds, Timestamp
from worker_orcd.api.requests import LIST_LIMIT_MAX
from worker_orcd.errors import JOB_CODES


class Job(Protocol):
    """What a record reads of a live job (worker_orcd.jobs.job.Job), named here so that
    this module, which the client and the router share, imports nothing of the jobs."""

    @property
    def job_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def prompt_token_count(self) -> int: ...
    @property
    def state(self) -> Any: ...  # a JobState
    @property
    def outcome(self) -> Any: ...  # an Outcome, once ended
    @property
    def cancel_flag(self) -> Any: ...  # its CancelFlag
    @property
    def cancel_requested(self) -> bool: ...
    @property
    def cancel_requested_at(self) -> str | None: ...
    @property
    def queued_at(self) -> str: ...
    @property
    def started_at(self) -> str | None: ...
    @property
    def ended_at(self) -> str | None: ...
    @property
    def canceled_at(self) -> str | None: ...
    @property
    def tokens_out(self) -> int: ...
    @property
    def text(self) -> str: ...


JobCode = Annotated[str, WithJsonSchema({"enum": [code.value for code in JOB_CODES]})]  # an ErrorCode's value
CancelReason = Annotated[
    str | None,
    WithJsonSchema(
        {
            "enum": ["client", "disconnect", "timeout", "shutdown", None],
            "description": "Why the cancel flag was raised: POST /cancel, the stream's client went away, "
            "--inference-timeout-sec, shutdown.",
        }
    ),
]
StopReason = Annotated[str | None, WithJsonSchema({"enum": ["eos", "max_tokens", "stop", None]})]


@with_config(ConfigDict(extra="forbid"))
class JobError(TypedDict):
    code: JobCode
    message: str | None
    retriable: bool


@with_config(ConfigDict(extra="forbid"))
class JobSummary(TypedDict):
    """A job in a listing: `Job` without `text`."""

    job_id: JobId
    state: JobState
    cancel_requested: bool
    cancel_requested_at: Timestamp | None
    cancel_reason: CancelReason
    queued_at: Timestamp
    started_at: Timestamp | None
    ended_at: Timestamp | None
    canceled_at: Timestamp | None
    tokens_out: Annotated[Count, Field(description="Model tokens generated.")]
    text_truncated: bool
    stop_reason: StopReason
    error: JobError | None
    stop_ms: Annotated[Milliseconds | None, Field(description="Cancel accepted → loop stopped.")]
    cancel_ms: Annotated[
        Milliseconds | None, Field(description="Cancel accepted → memory released and CANCELLED queued for the stream.")
    ]


@with_config(ConfigDict(extra="forbid"))
class JobRecord(JobSummary):
    """A job as `GET /jobs/{job_id}` shows it."""

    text: Annotated[
        str,
        Field(
            description="What was generated, also the partial text of a cancelled job (WO-JOBS-1); at most 64 KiB "
            "of UTF-8 once in the ledger."
        ),
    ]
    queue_position: NotRequired[
        Annotated[
            Count,
            Field(
                description="Only while the job is queued: how many jobs will start before it (0: it is next; WO-JOBS-5)."
            ),
        ]
    ]


@with_config(ConfigDict(extra="forbid"))
class JobList(TypedDict):
    jobs: Annotated[list[JobSummary], Field(max_length=LIST_LIMIT_MAX)]


def _in_json_order(summary: tuple[str, ...]) -> tuple[str, ...]:
    at = summary.index("tokens_out") + 1
    return (*summary[:at], "text", *summary[at:])


# A record's fields as the JSON has them: the text after the token count; a queued job's
# position is not kept (it is true only while the job waits).
_SUMMARY_FIELDS: tuple[str, ...] = tuple(JobSummary.__annotations__)
FIELDS: tuple[str, ...] = _in_json_order(_SUMMARY_FIELDS)

# The ledger's columns of a field that is not kept as one column of its name.
_COLUMNS_OF: dict[str, tuple[str, ...]] = {
    "cancel_requested": (),
    "error": ("error_code", "error_message", "error_retriable"),
}
KEY = ("tenant", "job_id")  # a row's identity: job ids are unique per tenant
COLUMNS: tuple[str, ...] = (
    "tenant",
    "correlation_id",
    "prompt_tokens",
    *(column for name in FIELDS for column in _COLUMNS_OF.get(name, (name,))),
)


def from_job(job: Job) -> JobRecord:
    """The live job's record, as of now."""
    outcome = job.outcome
    error: JobError | None = None
    if outcome is not None and outcome.error_code is not None:
        data = outcome.event.data
        error = {
            "code": outcome.error_code.value,
            "message": data.get("message"),
            "retriable": data.get("retriable", False),
        }
    reason = job.cancel_flag.reason
    return {
        "job_id": job.job_id,
        "state": job.state.value,
        "cancel_requested": job.cancel_requested,
        "cancel_requested_at": job.cancel_requested_at,
        "cancel_reason": reason.value if reason else None,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "canceled_at": job.canceled_at,
        "tokens_out": job.tokens_out,
        "text": job.text,
        "text_truncated": False,
        "stop_reason": outcome.stop_reason if outcome else None,
        "error": error,
        "stop_ms": outcome.stop_ms if outcome else None,
        "cancel_ms": outcome.cancel_ms if outcome else None,
    }


def row_of(job: Job) -> dict[str, Any]:
    """The job's ledger row as of now, by column (its whole text: the ledger caps it)."""
    record = from_job(job)
    row: dict[str, Any] = {"tenant": job.tenant, "correlation_id": job.correlation_id}
    row["prompt_tokens"] = job.prompt_token_count
    for name in FIELDS:
        if name not in _COLUMNS_OF:
            row[name] = record[name]  # type: ignore[literal-required]
    error = record["error"]
    row["error_code"] = error["code"] if error else None
    row["error_message"] = error["message"] if error else None
    row["error_retriable"] = bool(error["retriable"]) if error else None
    return row


def from_row(row: Mapping[str, Any]) -> JobRecord:
    """A ledger row's record."""
    return _from_row(row, FIELDS)  # type: ignore[return-value]


def summary_from_row(row: Mapping[str, Any]) -> JobSummary:
    """A ledger row's record for a listing: without its text."""
    return _from_row(row, _SUMMARY_FIELDS)  # type: ignore[return-value]


def _from_row(row: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name in fields:
        convert = _FROM_ROW.get(name)
        record[name] = row[name] if convert is None else convert(row)
    return record


def _error_of(row: Mapping[str, Any]) -> JobError | None:
    if row["error_code"] is None:
        return None
    return {"code": row["error_code"], "message": row["error_message"], "retriable": bool(row["error_retriable"])}


# Fields a row keeps in another form than the record's.
_FROM_ROW: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "cancel_requested": lambda row: row["cancel_requested_at"] is not None,
    "error": _error_of,
    "text_truncated": lambda row: bool(row["text_truncated"]),
}


@with_config(ConfigDict(extra="forbid"))
class CancelAccepted(TypedDict):
    """POST /cancel's answer: the flag is raised; the job's stream says how it ended."""

    status: Literal["cancelling"]
    job_id: JobId
