"""OpenAI request parsing (WO-OAI-2, WO-OAI-3, WO-OAI-7): what is accepted, how it maps to a
job, and the 400 that names the first bad parameter in OpenAI's error shape."""

from __future__ import annotations

import pytest

from worker_orcd.http.openai.errors import OpenAIError, from_request_error
from worker_orcd.http.openai.params import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    check_model,
    parse_chat,
    parse_completion,
    request_id,
)
from worker_orcd.http.errors import RequestError
from worker_orcd.http.validation import JOB_ID_PATTERN, MAX_PROMPT_CHARS, invalid
from worker_orcd.errors import ErrorCode

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
MESSAGES = [{"role": "user", "content": "Hi"}]
CHAT = {"model": MODEL, "messages": MESSAGES}
COMPLETION = {"model": MODEL, "prompt": "Once"}


def rejected(parse, body: dict) -> OpenAIError:
    with pytest.raises(OpenAIError) as raised:
        parse(body)
    error = raised.value
    assert error.status == 400
    shape = error.body()["error"]
    assert list(shape) == ["message", "type", "param", "code"]
    assert shape["type"] == "invalid_request_error" and shape["message"]
    return error


def test_chat_defaults_and_mapping():
    req = parse_chat(CHAT)
    assert req.template_messages == ({"role": "user", "content": "Hi"},)
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.repetition_penalty) == (None, 1.0, 1.0, 0, 1.0)
    assert req.stop == () and req.stream is False and req.include_usage is False and req.user is None
    assert 0 <= req.seed < 2**64
    sampling = req.sampling(max_tokens=5)
    assert sampling.max_tokens == 5 and sampling.seed == req.seed and sampling.stop == ()


def test_chat_parameters():
    req = parse_chat(
        {
            **CHAT,
            "max_completion_tokens": 7,
            "temperature": 0,
            "top_p": 0.5,
            "stop": "END",
            "seed": -1,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u-1",
            "top_k": 40,
            "repetition_penalty": 1.1,
        }
    )
    assert req.max_tokens == 7 and req.temperature == 0.0 and req.top_p == 0.5
    assert req.stop == ("END",) and req.seed == 2**64 - 1  # a negative OpenAI seed, modulo 2^64
    assert req.stream and req.include_usage and req.user == "u-1"
    assert req.top_k == 40 and req.repetition_penalty == 1.1
    assert parse_chat({**CHAT, "max_tokens": 9}).max_tokens == 9
    assert parse_chat({**CHAT, "max_tokens": 9, "max_completion_tokens": 9}).max_tokens == 9


def test_messages_roles_parts_and_names():
    req = parse_chat(
        {
            **CHAT,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "ann"},
                {"role": "assistant", "content": "ok", "refusal": None},
            ],
        }
    )
    assert req.template_messages == (
        {"role": "system", "content": "Be brief."},  # `developer` is OpenAI's newer `system`
        {"role": "user", "content": "a\nb", "name": "ann"},
        {"role": "assistant", "content": "ok"},
    )


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 1},
        {"n": None},
        {"logprobs": False},
        {"top_logprobs": None},
        {"presence_penalty": 0},
        {"frequency_penalty": 0.0},
        {"logit_bias": {}},
        {"response_format": {"type": "text"}},
        {"tools": None},
        {"tool_choice": "none"},
        {"parallel_tool_calls": False},
        {"store": False},
        {"service_tier": "auto"},
        {"modalities": ["text"]},
        {"stream": True, "stream_options": None},
        {"stream": True, "stream_options": {}},
        {"max_tokens": None, "temperature": None, "stop": None, "seed": None, "user": None},
    ],
)
def test_harmless_defaults_are_accepted(extra):
    parse_chat({**CHAT, **extra})


@pytest.mark.parametrize(
    "extra, param, code",
    [
        ({"n": 2}, "n", "unsupported_value"),
        ({"logprobs": True}, "logprobs", "unsupported_value"),
        ({"top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
        ({"presence_penalty": 0.1}, "presence_penalty", "unsupported_value"),
        ({"frequency_penalty": -1}, "frequency_penalty", "unsupported_value"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
        ({"tools": [{"type": "function"}]}, "tools", "unsupported_parameter"),
        ({"tool_choice": "required"}, "tool_choice", "unsupported_value"),
        ({"audio": {"voice": "alloy"}}, "audio", "unsupported_parameter"),
        ({"store": True}, "store", "unsupported_value"),
        ({"best_of": 1}, "best_of", "unknown_parameter"),  # a completions parameter
        ({"mirostat": 2}, "mirostat", "unknown_parameter"),
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"temperature": True}, "temperature", "invalid_type"),  # a boolean is not a number
        ({"top_p": 1.5}, "top_p", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": 4096}, "max_tokens", "invalid_value"),
        ({"max_tokens": 1.5}, "max_tokens", "invalid_type"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "invalid_value"),
        ({"seed": 2**64}, "seed", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"stop": [""]}, "stop", "invalid_value"),
        ({"stop": 3}, "stop", "invalid_type"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"stream": True, "stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation", "unknown_parameter"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage", "invalid_type"),
        ({"user": 5}, "user", "invalid_type"),
        ({"user": "u" * 257}, "user", "invalid_value"),
        ({"model": None}, "model", "missing_required_parameter"),
        ({"model": 3}, "model", "invalid_type"),
        ({"messages": []}, "messages", "empty_array"),
        ({"messages": "Hi"}, "messages", "invalid_type"),
        ({"messages": None}, "messages", "missing_required_parameter"),
        ({"messages": [{"content": "Hi"}]}, "messages[0].role", "missing_required_parameter"),
        ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "tool", "content": "Hi"}]}, "messages[0].role", "unsupported_value"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": 1}]}, "messages[0].content", "invalid_type"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
            "unsupported_value",
        ),
        ({"messages": [{"role": "assistant", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls", "unknown_parameter"),
    ],
)
def test_chat_rejects(extra, param, code):
    error = rejected(parse_chat, {**CHAT, **extra})
    assert (error.param, error.code) == (param, code)


def test_unknown_parameters_come_first():
    error = rejected(parse_chat, {"mystery": 1, "n": 3})
    assert error.param == "mystery" and error.message == "Unknown parameter: 'mystery'."


def test_completion_defaults_and_prompt_forms():
    req = parse_completion(COMPLETION)
    assert req.prompt == "Once" and req.template_messages == ()
    assert req.max_tokens == COMPLETION_DEFAULT_MAX_TOKENS == 16  # OpenAI's default here
    assert parse_completion({**COMPLETION, "prompt": ["Twice"]}).prompt == "Twice"
    for harmless in ({"echo": False}, {"best_of": 1}, {"logprobs": None}, {"suffix": None}, {"n": 1}):
        parse_completion({**COMPLETION, **harmless})


@pytest.mark.parametrize(
    "extra, param, code",
    [
        ({"prompt": ""}, "prompt", "invalid_value"),
        ({"prompt": ["a", "b"]}, "prompt", "unsupported_value"),
        ({"prompt": [1, 2, 3]}, "prompt", "unsupported_value"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt", "invalid_value"),
        ({"echo": True}, "echo", "unsupported_value"),
        ({"best_of": 2}, "best_of", "unsupported_value"),
        ({"logprobs": 0}, "logprobs", "unsupported_parameter"),
        ({"suffix": "end"}, "suffix", "unsupported_parameter"),
        ({"messages": MESSAGES}, "messages", "unknown_parameter"),
        ({"max_completion_tokens": 3}, "max_completion_tokens", "unknown_parameter"),
    ],
)
def test_completion_rejects(extra, param, code):
    error = rejected(parse_completion, {**COMPLETION, **extra})
    assert (error.param, error.code) == (param, code)


def test_model_by_name_or_stem():
    check_model(MODEL, MODEL)
    check_model("SmolLM2-135M-Instruct.Q4_1", MODEL)
    with pytest.raises(OpenAIError) as raised:
        check_model("gpt-4o", MODEL)
    assert raised.value.status == 404 and raised.value.code == "model_not_found"
    assert raised.value.param == "model" and MODEL in raised.value.message


def test_request_id_is_the_job_id():
    assert request_id({"X-Request-Id": "my-job.1"}, "chat") == "my-job.1"
    chat, completion = request_id({}, "chat"), request_id({}, "completion")
    assert chat.startswith("chatcmpl-") and completion.startswith("cmpl-")
    assert JOB_ID_PATTERN.fullmatch(chat) and JOB_ID_PATTERN.fullmatch(completion)
    assert request_id({}, "chat") != chat
    for bad in ("", "has space", "x" * 129, "ü"):
        with pytest.raises(OpenAIError) as raised:
            request_id({"X-Request-Id": bad}, "chat")
        assert raised.value.status == 400


def test_worker_errors_in_openai_shape():
    """WO-OAI-10: the errors of accepting a job keep their worker codes and headers."""
    busy = from_request_error(RequestError(ErrorCode.WORKER_BUSY, "full", headers={"Retry-After": "1"}), "chat")
    assert (busy.status, busy.code, busy.body()["error"]["type"]) == (503, "WORKER_BUSY", "server_error")
    assert busy.headers == {"Retry-After": "1"}
    exists = from_request_error(RequestError(ErrorCode.JOB_EXISTS, "taken"), "chat")
    assert exists.status == 409 and exists.code == "JOB_EXISTS" and exists.headers["x-should-retry"] == "false"
    tenant = from_request_error(RequestError(ErrorCode.TENANT_BUSY, "limit"), "completion")
    assert tenant.status == 429 and tenant.body()["error"]["type"] == "rate_limit_error"
    too_long = from_request_error(
        invalid([{"field": "prompt", "reason": "is 5000 tokens; this worker's context holds 4096"}]), "chat"
    )
    assert (too_long.status, too_long.param, too_long.code) == (400, "messages", "context_length_exceeded")
    stop = from_request_error(invalid([{"field": "stop[0]", "reason": "is 40 tokens; at most 32"}]), "completion")
    assert (stop.param, stop.code) == ("stop[0]", "invalid_value")
