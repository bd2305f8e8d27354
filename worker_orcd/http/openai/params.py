"""OpenAI request bodies → what the worker runs, or a 400 naming the first bad parameter.

Strict like `/execute` (WO-EXEC-2): a parameter the worker does not know is
`unknown_parameter`; one it knows but cannot honour is rejected unless its value
is the harmless default (`n: 1`, `logprobs: false`, `presence_penalty: 0`,
`response_format: {"type": "text"}`, …), never silently ignored (WO-OAI-3).
Worker extensions, sent by OpenAI clients as extra body fields: `top_k` and
`repetition_penalty`, as in `/execute`.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker_orcd.http.openai.errors import OpenAIError, invalid
from worker_orcd.http.validation import (
    JOB_ID_PATTERN,
    MAX_PROMPT_CHARS,
    MAX_STOP_STRINGS,
    MAX_TOKENS_LIMIT,
    SEED_MAX,
    ExecuteRequest,
)

CHAT = "chat"
COMPLETION = "completion"
# OpenAI's default for the legacy completions endpoint; chat's is "as many as fit".
COMPLETION_DEFAULT_MAX_TOKENS = 16
SEED_MIN = -(2**63)  # OpenAI's seed is a signed 64-bit integer
ROLES = ("system", "developer", "user", "assistant")
REQUEST_ID_HEADER = "X-Request-Id"
MAX_USER_CHARS = 256
# More than ever fit a prompt of MAX_PROMPT_CHARS through a chat template; bounds the
# validation and the template's rendering of a body of many tiny messages (WO-LIMIT-6).
MAX_MESSAGES = 1024


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    kind: str  # CHAT or COMPLETION
    model: str
    messages: tuple[dict[str, str], ...]  # chat: role, content (and name when given)
    prompt: str  # completion
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    stop: tuple[str, ...]
    seed: int  # 0..2^64-1: a negative OpenAI seed is taken modulo 2^64
    stream: bool
    include_usage: bool
    user: str | None

    def to_execute(self, job_id: str, prompt: str) -> ExecuteRequest:
        return ExecuteRequest(
            job_id=job_id,
            prompt=prompt,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=self.stop,
            seed=self.seed,
            seed_generated=False,
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(v), type(v).__name__)


def _wrong_type(param: str, expected: str, value: Any) -> OpenAIError:
    return invalid(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.", param, "invalid_type"
    )


def _unsupported(param: str, why: str, code: str = "unsupported_parameter") -> OpenAIError:
    return invalid(f"'{param}' {why} is not supported by this worker.", param, code)


def _text(value: Any, param: str, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _wrong_type(param, "a string", value)
    if not allow_empty and not value:
        raise invalid(f"'{param}' must not be empty.", param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"'{param}' is not valid Unicode text (a lone surrogate).", param) from None
    return value


# -- parameters the worker cannot honour, accepted only at their harmless value ------------
# name → (is the value harmless?, what the 400 says about any other value, code)


def _none_or(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: v is None or any(type(v) is type(a) and v == a for a in allowed)


def _zero(v: Any) -> bool:
    return v is None or (_is_number(v) and v == 0)


def _text_format(v: Any) -> bool:
    return v is None or v == {"type": "text"}


def _one(v: Any) -> bool:
    return v is None or (_is_int(v) and v == 1)


_DEFAULT_ONLY: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "n": (_one, "other than 1 (one choice per request)", "unsupported_value"),
    "logprobs": (_none_or(False), "(log probabilities)", "unsupported_value"),
    "top_logprobs": (_none_or(0), "(log probabilities)", "unsupported_parameter"),
    "presence_penalty": (_zero, "other than 0", "unsupported_value"),
    "frequency_penalty": (_zero, "other than 0", "unsupported_value"),
    "logit_bias": (_none_or({}), "(token biases)", "unsupported_parameter"),
    "response_format": (_text_format, 'other than {"type": "text"}', "unsupported_value"),
    "tools": (_none_or([]), "(tool calling)", "unsupported_parameter"),
    "tool_choice": (_none_or("none", "auto"), 'other than "none" (tool calling)', "unsupported_value"),
    # Without tools there are no tool calls to run in parallel or not.
    "parallel_tool_calls": (_none_or(True, False), "(tool calling)", "unsupported_value"),
    "functions": (_none_or([]), "(function calling)", "unsupported_parameter"),
    "function_call": (_none_or("none", "auto"), 'other than "none" (function calling)', "unsupported_value"),
    "store": (_none_or(False), "(stored completions)", "unsupported_value"),
    "metadata": (_none_or({}), "(stored completions)", "unsupported_parameter"),
    "service_tier": (_none_or("auto", "default"), 'other than "auto" or "default"', "unsupported_value"),
    "modalities": (_none_or(["text"]), 'other than ["text"]', "unsupported_value"),
    "audio": (_none_or(), "(audio output)", "unsupported_parameter"),
    "prediction": (_none_or(), "(predicted outputs)", "unsupported_parameter"),
    "reasoning_effort": (_none_or(), "(reasoning)", "unsupported_parameter"),
    "web_search_options": (_none_or(), "(web search)", "unsupported_parameter"),
    "echo": (_none_or(False), "(echoing the prompt)", "unsupported_value"),
    "best_of": (_one, "other than 1", "unsupported_value"),
    "suffix": (_none_or(""), "(insertion)", "unsupported_parameter"),
}

_CHAT_DEFAULT_ONLY = (
    "n", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
    "store", "metadata", "service_tier", "modalities", "audio", "prediction", "reasoning_effort",
    "web_search_options",
)  # fmt: skip
# The legacy endpoint's `logprobs` is a count (null: none), not a boolean.
_COMPLETION_DEFAULT_ONLY = (
    "n", "presence_penalty", "frequency_penalty", "logit_bias", "echo", "best_of", "suffix",
)  # fmt: skip

_COMMON = (
    "model", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed",
    "stream", "stream_options", "user",
)  # fmt: skip
CHAT_PARAMS = frozenset((*_COMMON, "messages", "max_completion_tokens", *_CHAT_DEFAULT_ONLY))
COMPLETION_PARAMS = frozenset((*_COMMON, "prompt", "logprobs", *_COMPLETION_DEFAULT_ONLY))


def _integer(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise _wrong_type(name, "an integer", v)
    if not low <= v <= high:
        raise invalid(f"Invalid '{name}': must be an integer from {low} to {high}, got {v}.", name)
    return v


def _number(body: Mapping[str, Any], name: str, low: float, high: float, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v):
        raise _wrong_type(name, "a number", v)
    if not low <= v <= high:
        raise invalid(f"Invalid '{name}': must be a number from {low:g} to {high:g}, got {v}.", name)
    return float(v)


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        raise _wrong_type("stop", "a string or an array of strings", v)
    if len(items) > MAX_STOP_STRINGS:
        raise invalid(f"'stop' holds at most {MAX_STOP_STRINGS} strings.", "stop")
    return tuple(_text(s, "stop", allow_empty=False) for s in items)


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong_type("stream", "a boolean", stream)
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not isinstance(options, dict):
        raise _wrong_type("stream_options", "an object", options)
    if not stream:
        raise invalid("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    for key in options:
        if key != "include_usage":
            raise invalid(f"Unknown parameter: 'stream_options.{key}'.", f"stream_options.{key}", "unknown_parameter")
    usage = options.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise _wrong_type("stream_options.include_usage", "a boolean", usage)
    return True, bool(usage)


def _common(
    body: Mapping[str, Any], known: frozenset[str], default_only: tuple[str, ...], required: str
) -> dict[str, Any]:
    for name in body:
        if name not in known:
            raise invalid(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    for name in ("model", required):
        if body.get(name) is None:
            raise invalid(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    for name in default_only:
        if name in body:
            harmless, why, code = _DEFAULT_ONLY[name]
            if not harmless(body[name]):
                raise _unsupported(name, why, code)
    user = body.get("user")
    if user is not None:
        _text(user, "user")
        if len(user) > MAX_USER_CHARS:
            raise invalid(f"'user' is at most {MAX_USER_CHARS} characters.", "user")
    seed = _integer(body, "seed", SEED_MIN, SEED_MAX)
    stream, include_usage = _stream(body)
    return {
        "model": _text(body["model"], "model"),
        "temperature": _number(body, "temperature", 0.0, 2.0, 1.0),
        "top_p": _number(body, "top_p", 0.0, 1.0, 1.0),
        "top_k": _integer(body, "top_k", 0, 2**31 - 1) or 0,  # the vocabulary bound: with the model
        "repetition_penalty": _number(body, "repetition_penalty", 0.0, 2.0, 1.0),
        "stop": _stop(body),
        "seed": secrets.randbits(64) if seed is None else seed % 2**64,
        "stream": stream,
        "include_usage": include_usage,
        "user": user,
    }


def _content(value: Any, param: str) -> str:
    """A message's text: a string, or an array of text parts (joined with newlines)."""
    if isinstance(value, str):
        return _text(value, param)
    if not isinstance(value, list):
        raise _wrong_type(param, "a string or an array of content parts", value)
    texts = []
    for i, part in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise _wrong_type(where, "an object", part)
        kind = part.get("type")
        if kind != "text":
            raise _unsupported(
                f"{where}.type", f"{kind!r}" if isinstance(kind, str) else "other than 'text'", "unsupported_value"
            )
        for key in part:
            if key not in ("type", "text"):
                raise invalid(f"Unknown parameter: '{where}.{key}'.", f"{where}.{key}", "unknown_parameter")
        if "text" not in part:
            raise invalid(f"Missing required parameter: '{where}.text'.", f"{where}.text", "missing_required_parameter")
        texts.append(_text(part["text"], f"{where}.text"))
    return "\n".join(texts)


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list):
        raise _wrong_type("messages", "an array", value)
    if not value:
        raise invalid("'messages' must hold at least one message.", "messages", "empty_array")
    if len(value) > MAX_MESSAGES:
        raise invalid(
            f"Invalid 'messages': array too long. Expected an array with maximum length {MAX_MESSAGES}, "
            f"but got an array with length {len(value)} instead.",
            "messages",
            "array_above_max_length",
        )
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object", message)
        for key in message:
            if key not in ("role", "content", "name", "refusal"):
                raise invalid(f"Unknown parameter: '{where}.{key}'.", f"{where}.{key}", "unknown_parameter")
        role = message.get("role")
        if role is None:
            raise invalid(f"Missing required parameter: '{where}.role'.", f"{where}.role", "missing_required_parameter")
        if role not in ROLES:
            if role in ("tool", "function"):
                raise _unsupported(f"{where}.role", f"{role!r} (tool calling)", "unsupported_value")
            raise invalid(f"Invalid '{where}.role': must be one of {', '.join(ROLES)}.", f"{where}.role")
        if message.get("refusal") is not None:
            raise _unsupported(f"{where}.refusal", "(refusals)")
        if message.get("content") is None:
            raise invalid(
                f"Missing required parameter: '{where}.content'.", f"{where}.content", "missing_required_parameter"
            )
        # `developer` is OpenAI's newer name for `system`; chat templates know `system`.
        entry = {
            "role": "system" if role == "developer" else role,
            "content": _content(message["content"], f"{where}.content"),
        }
        if message.get("name") is not None:
            entry["name"] = _text(message["name"], f"{where}.name")
        out.append(entry)
    return tuple(out)


def parse_chat(body: Mapping[str, Any]) -> OpenAIRequest:
    common = _common(body, CHAT_PARAMS, _CHAT_DEFAULT_ONLY, "messages")
    messages = _messages(body["messages"])
    max_tokens = _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    max_completion = _integer(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise invalid("'max_tokens' and 'max_completion_tokens' differ; send one of them.", "max_completion_tokens")
    return OpenAIRequest(
        kind=CHAT,
        messages=messages,
        prompt="",
        max_tokens=max_completion if max_completion is not None else max_tokens,
        **common,
    )


def parse_completion(body: Mapping[str, Any]) -> OpenAIRequest:
    common = _common(body, COMPLETION_PARAMS, _COMPLETION_DEFAULT_ONLY, "prompt")
    if body.get("logprobs") is not None:
        raise _unsupported("logprobs", "(log probabilities)")
    prompt = body["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise invalid(
                "'prompt' is one string (or an array of exactly one string); token arrays and "
                "several prompts are not supported by this worker.",
                "prompt",
                "unsupported_value",
            )
        prompt = prompt[0]
    prompt = _text(prompt, "prompt", allow_empty=False)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise invalid(f"'prompt' is at most {MAX_PROMPT_CHARS} characters.", "prompt")
    max_tokens = _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)
    return OpenAIRequest(
        kind=COMPLETION,
        messages=(),
        prompt=prompt,
        max_tokens=COMPLETION_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        **common,
    )


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
