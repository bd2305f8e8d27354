"""Request bodies → typed requests, or an INVALID_REQUEST naming every bad field.

Validation is strict: unknown fields, wrong types (a bool is not a number),
non-finite numbers and out-of-range values are all rejected before anything is
queued. Limits that need the tokenizer (prompt and stop lengths in tokens) are
checked by `check_token_limits` once the route has tokenized off the event loop.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker_orcd.api.ids import JOB_ID_PATTERN
from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import RequestError

MAX_PROMPT_CHARS = 32768
MAX_TOKENS_LIMIT = 2048
MAX_STOP_STRINGS = 4
MAX_STOP_TOKENS = 32
SEED_MAX = 2**64 - 1

EXECUTE_FIELDS = (
    "job_id",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "seed",
)


@dataclass(frozen=True, slots=True)
class ExecuteRequest:
    job_id: str
    prompt: str
    max_tokens: int | None  # None: as many as fit, at most MAX_TOKENS_LIMIT
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    stop: tuple[str, ...]
    seed: int
    seed_generated: bool


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _job_id_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if not JOB_ID_PATTERN.fullmatch(value):
        return "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
    return None


def parse_execute(body: dict[str, Any]) -> ExecuteRequest:
    problems: list[dict[str, str]] = []

    def problem(field: str, reason: str) -> None:
        problems.append({"field": field, "reason": reason})

    for name in body:
        if name not in EXECUTE_FIELDS:
            problem(name, "unknown field")

    job_id = body.get("job_id")
    if "job_id" not in body:
        problem("job_id", "is required")
    elif (why := _job_id_problem(job_id)) is not None:
        problem("job_id", why)

    prompt = body.get("prompt")
    if "prompt" not in body:
        problem("prompt", "is required")
    elif not isinstance(prompt, str):
        problem("prompt", "must be a string")
    elif not prompt:
        problem("prompt", "must not be empty")
    elif len(prompt) > MAX_PROMPT_CHARS:
        problem("prompt", f"must be at most {MAX_PROMPT_CHARS} characters")

    def integer(name: str, low: int, high: int, default: Any) -> Any:
        if name not in body or body[name] is None:
            return default
        v = body[name]
        if not _is_int(v) or not low <= v <= high:
            problem(name, f"must be an integer from {low} to {high}")
        return v

    def number(name: str, low: float, high: float, default: float) -> float:
        if name not in body or body[name] is None:
            return default
        v = body[name]
        if not _is_number(v) or not low <= v <= high:
            problem(name, f"must be a number from {low} to {high}")
            return default
        return float(v)

    max_tokens = integer("max_tokens", 1, MAX_TOKENS_LIMIT, None)
    temperature = number("temperature", 0.0, 2.0, 1.0)
    top_p = number("top_p", 0.0, 1.0, 1.0)
    top_k = integer("top_k", 0, 2**31 - 1, 0)  # the vocabulary bound is checked with the model
    repetition_penalty = number("repetition_penalty", 0.0, 2.0, 1.0)
    seed = integer("seed", 0, SEED_MAX, None)

    stop = body.get("stop")
    if stop is None:
        stop = []
    elif not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        problem("stop", "must be a list of non-empty strings")
        stop = []
    elif len(stop) > MAX_STOP_STRINGS:
        problem("stop", f"must hold at most {MAX_STOP_STRINGS} strings")

    if problems:
        raise invalid(problems)
    seed_generated = seed is None
    assert isinstance(job_id, str) and isinstance(prompt, str)  # else a problem was raised above
    return ExecuteRequest(
        job_id=job_id,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        stop=tuple(stop),
        seed=secrets.randbits(64) if seed_generated else seed,
        seed_generated=seed_generated,
    )


def check_token_limits(
    req: ExecuteRequest,
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


MAX_DECIMAL_DIGITS = 18  # more is past every count the worker takes, and int() of it costs


def plain_decimal(text: str | bytes) -> int | None:
    """A count written in ASCII digits; None for anything else.

    `str.isdigit()` is true for "²" and "١", which `int()` refuses or reads as a
    digit no client meant. A longer run of digits than any limit allows reads as
    the first number past them all.
    """
    if not text or not text.isascii() or not text.isdigit():
        return None
    significant = text.lstrip(b"0") if isinstance(text, bytes) else text.lstrip("0")
    if len(significant) > MAX_DECIMAL_DIGITS:
        return 10**MAX_DECIMAL_DIGITS
    return int(significant or "0")


def parse_cancel(body: dict[str, Any]) -> str:
    problems = [{"field": k, "reason": "unknown field"} for k in body if k != "job_id"]
    if "job_id" not in body:
        problems.append({"field": "job_id", "reason": "is required"})
    elif (why := _job_id_problem(body["job_id"])) is not None:
        problems.append({"field": "job_id", "reason": why})
    if problems:
        raise invalid(problems)
    return body["job_id"]


JOB_STATES = ("queued", "running", "completed", "cancelled", "failed")
LIST_LIMIT_MAX = 1000
LIST_LIMIT_DEFAULT = 50


def parse_list_query(query: Mapping[str, str]) -> tuple[str | None, int]:
    """`state` and `limit` of GET /jobs."""
    problems = [{"field": k, "reason": "unknown query parameter"} for k in query if k not in ("state", "limit")]
    state = query.get("state")
    if state is not None and state not in JOB_STATES:
        problems.append({"field": "state", "reason": f"must be one of {', '.join(JOB_STATES)}"})
    limit = LIST_LIMIT_DEFAULT
    raw = query.get("limit")
    if raw is not None:
        value = plain_decimal(raw)
        if value is not None and 1 <= value <= LIST_LIMIT_MAX:
            limit = value
        else:
            problems.append({"field": "limit", "reason": f"must be an integer from 1 to {LIST_LIMIT_MAX}"})
    if problems:
        raise invalid(problems)
    return state, limit
