"""OpenAI request bodies → what the worker runs, or a 400 naming the first bad parameter.

Strict like `/execute` (WO-EXEC-2): a parameter the worker does not know is
`unknown_parameter`; one it knows but cannot honour is rejected unless its value
is the harmless default (`n: 1`, `logprobs: false`, `presence_penalty: 0`,
`response_format: {"type": "text"}`, …), never silently ignored (WO-OAI-3).
Worker extensions, sent by OpenAI clients as extra body fields: `top_k` and
`repetition_penalty`, as in `/execute`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from worker_orcd.api.ids import JOB_ID_PATTERN
from worker_orcd.api.requests import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    MAX_MESSAGES,
    OpenAIChatRequest,
    OpenAICompletionRequest,
    type_name,
)
from worker_orcd.http.openai.errors import OpenAIError, invalid

__all__ = ["COMPLETION_DEFAULT_MAX_TOKENS", "MAX_MESSAGES", "OpenAIChatRequest", "OpenAICompletionRequest",
           "OpenAIRequest", "check_model", "parse_chat", "parse_completion", "request_id"]  # fmt: skip

CHAT = "chat"
COMPLETION = "completion"
REQUEST_ID_HEADER = "X-Request-Id"

OpenAIRequest = OpenAIChatRequest | OpenAICompletionRequest

# pydantic's type errors → what OpenAI's message says was expected.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "finite_number": "a number",
    "string_type": "a string",
    "bool_type": "a boolean",
    "list_type": "an array",
    "tuple_type": "an array",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "content_type": "a string or an array of content parts",
}
# (parameter, pydantic's error) → OpenAI's message and code, for the bounds of sizes.
_SIZES = {
    ("prompt", "too_short"): ("'prompt' must not be empty.", "invalid_value"),
    ("prompt", "too_long"): ("'prompt' is at most {max_length} characters.", "invalid_value"),
    ("user", "too_long"): ("'user' is at most {max_length} characters.", "invalid_value"),
    ("messages", "too_short"): ("'messages' must hold at least one message.", "empty_array"),
    ("messages", "too_long"): (
        (
            "Invalid 'messages': array too long. Expected an array with maximum length {max_length}, "
            "but got an array with length {actual_length} instead."
        ),
        "array_above_max_length",
    ),
}


def _param(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as OpenAI names a parameter: `messages[0].content[1].text`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith("<"):  # a union's tag, not a name
            out += f".{part}" if out else part
    return out


def _error(model: type[OpenAIRequest], error: ErrorDetails) -> OpenAIError:
    """One of pydantic's errors in OpenAI's words."""
    kind, loc, value = error["type"], error["loc"], error["input"]
    param = _param(loc)
    if kind == "extra_forbidden":
        return invalid(f"Unknown parameter: '{param}'.", param, "unknown_parameter")
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
        return invalid(
            f"Invalid type for '{param}': expected {expected}, but got {type_name(value)} instead.",
            param,
            "invalid_type",
        )
    if kind == "string_unicode":
        return invalid(f"'{param}' is not valid Unicode text (a lone surrogate).", param)
    if kind in ("greater_than_equal", "less_than_equal"):
        low = high = None
        for item in model.model_fields[param].metadata:
            low = getattr(item, "ge", low)
            high = getattr(item, "le", high)
        what = f"a number from {low:g} to {high:g}" if isinstance(low, float) else f"an integer from {low} to {high}"
        return invalid(f"Invalid '{param}': must be {what}, got {value}.", param)
    size = (param, kind.removeprefix("string_"))  # a string's bounds and a list's read alike
    if size in _SIZES:
        message, code = _SIZES[size]
        return invalid(message.format(**error.get("ctx", {})), param, code)
    # Our own checks: the type is the code, the message says `{param}` for where.
    return invalid(error["msg"].replace("{param}", param), param, kind)


def _first_error(model: type[OpenAIRequest], errors: list[ErrorDetails]) -> OpenAIError:
    """The parameter OpenAI would name: an unknown one, then a missing one, then in the model's check order."""
    order = {name: i for i, name in enumerate(model.check_order)}

    def rank(error: ErrorDetails) -> tuple[int, int]:
        loc = error["loc"]
        top = len(loc) == 1
        if top and error["type"] == "extra_forbidden":
            return 0, 0
        if top and error["type"] == "missing":
            return 1, model.required.index(str(loc[0]))
        return 2, order.get(str(loc[0]), len(order))

    return _error(model, min(errors, key=rank))


def _parse(model: type[OpenAIRequest], body: Mapping[str, Any]) -> OpenAIRequest:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _first_error(model, exc.errors(include_url=False)) from None


def parse_chat(body: Mapping[str, Any]) -> OpenAIChatRequest:
    return _parse(OpenAIChatRequest, body)  # type: ignore[return-value]


def parse_completion(body: Mapping[str, Any]) -> OpenAICompletionRequest:
    return _parse(OpenAICompletionRequest, body)  # type: ignore[return-value]


def request_id(headers: Mapping[str, str], kind: str) -> str:
    """The job id: the caller's X-Request-Id (a valid job id, WO-JOB-3), else a new one."""
    given = headers.get(REQUEST_ID_HEADER)
    if given is None:
        prefix = "chatcmpl-" if kind == CHAT else "cmpl-"
        return prefix + secrets.token_hex(12)
    if not JOB_ID_PATTERN.fullmatch(given):
        raise invalid(
            f"{REQUEST_ID_HEADER} must be 1 to 128 characters of A-Z a-z 0-9 . _ : - (it becomes the job id).",
            None,
        )
    return given


def check_model(requested: str, loaded_name: str) -> None:
    """The loaded model, by the name /health reports or by its file stem (WO-OAI-2)."""
    if requested in (loaded_name, model_stem(loaded_name)):
        return
    raise OpenAIError(
        404,
        f"The model '{requested}' does not exist on this worker; it serves '{loaded_name}' "
        f"(also '{model_stem(loaded_name)}').",
        param="model",
        code="model_not_found",
    )


_GGUF_SUFFIX = re.compile(r"\.gguf$", re.IGNORECASE)


def model_stem(name: str) -> str:
    return _GGUF_SUFFIX.sub("", name)
