"""Request bodies → their models (`worker_orcd.api.requests`), or an INVALID_REQUEST naming every bad field.

Validation is strict: unknown fields, wrong types (a bool is not a number),
non-finite numbers and out-of-range values are all rejected before anything is
queued; each bad field is named once, in the words of `details[].reason`. Limits that need the tokenizer (prompt and stop lengths in tokens) are
checked by `check_token_limits` once the route has tokenized off the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from worker_orcd.api.fields import JOB_STATES
from worker_orcd.api.ids import JOB_ID_PATTERN
from worker_orcd.api.requests import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    MAX_PROMPT_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKENS,
    MAX_TOKENS_LIMIT,
    SEED_MAX,
    CancelRequest,
    ExecuteRequest,
    JobsQuery,
    SamplingFields,
    plain_decimal,
)
from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import RequestError

__all__ = [
    "JOB_ID_PATTERN", "JOB_STATES", "LIST_LIMIT_DEFAULT", "LIST_LIMIT_MAX", "MAX_PROMPT_CHARS",
    "MAX_STOP_STRINGS", "MAX_STOP_TOKENS", "MAX_TOKENS_LIMIT", "SEED_MAX", "ExecuteRequest",
    "check_token_limits", "invalid", "parse_cancel", "parse_execute", "parse_json_object",
    "parse_list_query", "plain_decimal",
]  # fmt: skip

JOB_ID_REASON = "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"


def invalid(problems: list[dict[str, str]]) -> RequestError:
    first = problems[0]
    return RequestError(
        ErrorCode.INVALID_REQUEST,
        f"{first['field']}: {first['reason']}" if first["field"] else first["reason"],
        details=problems,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise invalid([{"field": "", "reason": "JSON is nested too deeply"}]) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid([{"field": "", "reason": f"body is not valid JSON: {exc}"}]) from None
    if not isinstance(value, dict):
        raise invalid([{"field": "", "reason": "body must be a JSON object"}])
    return value


def _range(model: type[BaseModel], name: str) -> str:
    """The field's bounds, as its 400 says them."""
    low = high = None
    for item in model.model_fields[name].metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    kind = "a number" if isinstance(low, float) else "an integer"
    return f"must be {kind} from {low} to {high}"


def _reason(model: type[BaseModel], error: ErrorDetails) -> str:
    """Today's words for one of pydantic's errors about a top-level field."""
    kind, name = error["type"], str(error["loc"][0])
    if kind == "extra_forbidden":
        return "unknown query parameter" if model is JobsQuery else "unknown field"
    if kind == "missing":
        return "is required"
    if name == "job_id":
        return "must be a string" if kind == "string_type" else JOB_ID_REASON
    if name == "prompt":
        if kind == "string_type":
            return "must be a string"
        if kind == "string_unicode":
            return "must be Unicode text (it holds a lone surrogate)"
        return "must not be empty" if kind == "string_too_short" else f"must be at most {MAX_PROMPT_CHARS} characters"
    if name == "stop":
        items = error["input"]
        if kind == "too_long" and all(isinstance(s, str) and s for s in items):
            return f"must hold at most {MAX_STOP_STRINGS} strings"
        return "must be a list of non-empty strings"
    if name == "state":
        return f"must be one of {', '.join(JOB_STATES)}"
    return _range(model, name)


Body = TypeVar("Body", bound=BaseModel)


def _validated(model: type[Body], body: Mapping[str, Any]) -> Body:
    """The body as `model`, or an INVALID_REQUEST naming every bad field once: unknown ones first."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    problems: dict[str, str] = {}
    for error in errors:
        field = str(error["loc"][0])
        problems.setdefault(field, _reason(model, error))
    raise invalid([{"field": field, "reason": reason} for field, reason in problems.items()])


def parse_execute(body: Mapping[str, Any]) -> ExecuteRequest:
    return _validated(ExecuteRequest, body)


def check_token_limits(
    req: SamplingFields,
    prompt_tokens: int,
    stop_tokens: list[int],
    *,
    n_ctx: int,
    vocab_size: int,
) -> int:
    """The job's max_tokens, once the prompt fits the context; raises INVALID_REQUEST."""
    problems: list[dict[str, str]] = []
    if prompt_tokens == 0:
        problems.append({"field": "prompt", "reason": "has no tokens"})
    room = n_ctx - prompt_tokens
    if room < 1:
        problems.append(
            {
                "field": "prompt",
                "reason": f"is {prompt_tokens} tokens; this worker's context holds {n_ctx} "
                "(shorten it or start the worker with a larger --n-ctx)",
            }
        )
    elif req.max_tokens is not None and req.max_tokens > room:
        problems.append(
            {
                "field": "max_tokens",
                "reason": f"prompt ({prompt_tokens} tokens) + max_tokens ({req.max_tokens}) "
                f"exceeds the context of {n_ctx} tokens; ask for at most {room}",
            }
        )
    if req.top_k > vocab_size:
        problems.append({"field": "top_k", "reason": f"must be an integer from 0 to {vocab_size}"})
    for i, n in enumerate(stop_tokens):
        if n > MAX_STOP_TOKENS:
            problems.append({"field": f"stop[{i}]", "reason": f"is {n} tokens; at most {MAX_STOP_TOKENS}"})
    if problems:
        raise invalid(problems)
    if req.max_tokens is not None:
        return req.max_tokens
    return min(MAX_TOKENS_LIMIT, room)


def parse_cancel(body: Mapping[str, Any]) -> str:
    return _validated(CancelRequest, body).job_id


def parse_list_query(query: Mapping[str, str]) -> tuple[str | None, int]:
    """`state` and `limit` of GET /jobs."""
    parsed = _validated(JobsQuery, dict(query))
    return parsed.state, parsed.limit
