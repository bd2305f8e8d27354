"""OpenAI chunks and answers from a job's events (WO-OAI-5, WO-OAI-6, WO-OAI-8, WO-OAI-11):
the pre-built chunk JSON is the JSON OpenAI's types read."""

from __future__ import annotations

import json

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from worker_orcd.errors import ErrorCode
from worker_orcd.http.openai.chunks import StreamEncoder, completion_body
from worker_orcd.jobs import events

MODEL = 'odd "model" \\ name.gguf'
TEXTS = ["Hello", ' "quoted"', "\nline\t", "é😀", "\u2028", "</script>"]


def decode(raw: bytes) -> list:
    if not raw:
        return []
    text = raw.decode("utf-8")
    assert text.endswith("\n\n")
    out = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block  # one data line per chunk
        payload = block[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def run(kind: str, include_usage: bool, stop_reason: str = "eos") -> list:
    encoder = StreamEncoder(kind, "chatcmpl-1", 1700000000, MODEL, prompt_tokens=11, include_usage=include_usage)
    batches = [
        [events.started("chatcmpl-1", MODEL, "2026-01-01T00:00:00.000Z", 1, 11, None)],
        [events.token(t, i) for i, t in enumerate(TEXTS)],
        [events.end(len(TEXTS), 1.0, stop_reason)],
    ]
    return [item for batch in batches for item in decode(encoder(batch))]


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_chunks(include_usage):
    *chunks, done = run("chat", include_usage)
    assert done == "[DONE]"
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    role, *content, finish = parsed[:-1] if include_usage else parsed
    assert role.choices[0].delta.role == "assistant" and role.choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in content] == TEXTS
    assert finish.choices[0].finish_reason == "stop" and chunks[len(TEXTS) + 1]["choices"][0]["delta"] == {}
    for chunk in chunks:
        assert chunk["id"] == "chatcmpl-1" and chunk["model"] == MODEL and chunk["created"] == 1700000000
        assert chunk["object"] == "chat.completion.chunk"
        assert ("usage" in chunk) is include_usage
    if include_usage:
        usage = chunks[-1]
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": 11, "completion_tokens": len(TEXTS), "total_tokens": 11 + len(TEXTS)}
        assert all(c["usage"] is None for c in chunks[:-1])


def test_a_token_chunk_is_the_json_of_its_dict():
    """The pre-built chunk is byte for byte what encoding the whole dict would give."""
    encoder = StreamEncoder("chat", "c-1", 5, MODEL, prompt_tokens=1, include_usage=False)
    expected = {
        "id": "c-1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": 'a"b'}, "logprobs": None, "finish_reason": None}],
    }
    wire = json.dumps(expected, ensure_ascii=False, separators=(",", ":"))
    assert encoder([events.token('a"b', 0)]) == f"data: {wire}\n\n".encode()


@pytest.mark.parametrize("stop_reason, finish", [("eos", "stop"), ("stop", "stop"), ("max_tokens", "length")])
def test_completion_chunks(stop_reason, finish):
    *chunks, done = run("completion", True, stop_reason)
    assert done == "[DONE]"
    # No role chunk for the legacy endpoint: the first chunk is text.
    assert [c["choices"][0]["text"] for c in chunks[: len(TEXTS)]] == TEXTS
    last, usage = chunks[-2:]
    assert last["choices"][0] == {"text": "", "index": 0, "logprobs": None, "finish_reason": finish}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(TEXTS)
    for chunk in chunks:
        assert chunk["object"] == "text_completion" and chunk["model"] == MODEL
    for chunk in chunks[: len(TEXTS)]:
        assert list(chunk["choices"][0]) == ["text", "index", "logprobs", "finish_reason"]
    # OpenAI's type wants a finish reason, which only the last text chunk has (the client
    # builds stream chunks without validating them).
    assert Completion.model_validate(last).choices[0].finish_reason == finish


def test_an_error_ends_the_stream_without_done():
    encoder = StreamEncoder("chat", "c-1", 5, MODEL, prompt_tokens=1, include_usage=True)
    cancelled = events.error(
        ErrorCode.CANCELLED, events.CANCELLED_MESSAGE, False, tokens_out=3, stop_ms=1.5, cancel_ms=2.5
    )
    assert decode(encoder([events.token("x", 0), cancelled]))[1] == {
        "error": {
            "message": "Job cancelled by client request",
            "type": "cancelled",
            "param": None,
            "code": "CANCELLED",
            "retriable": False,
            "tokens_out": 3,
            "stop_ms": 1.5,
            "cancel_ms": 2.5,
        }
    }
    timeout = decode(encoder([events.error(ErrorCode.INFERENCE_TIMEOUT, "too long", True)]))
    assert timeout == [{"error": {"message": "too long", "type": "server_error", "param": None, "code": "INFERENCE_TIMEOUT", "retriable": True}}]


def test_whole_answers():
    evs = [
        events.started("x", MODEL, "t", 1, 11, None),
        *[events.token(t, i) for i, t in enumerate(TEXTS)],
        events.end(len(TEXTS), 1.0, "max_tokens"),
    ]
    status, body = completion_body("chat", "chatcmpl-9", 7, MODEL, 11, evs)
    assert status == 200
    answer = ChatCompletion.model_validate(body)
    assert answer.id == "chatcmpl-9" and answer.object == "chat.completion" and answer.model == MODEL
    assert answer.choices[0].message.content == "".join(TEXTS) and answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens == 11 and answer.usage.completion_tokens == len(TEXTS)

    status, body = completion_body("completion", "cmpl-9", 7, MODEL, 11, evs)
    assert status == 200 and Completion.model_validate(body).choices[0].text == "".join(TEXTS)

    failed = [events.error(ErrorCode.ENGINE_FAILED, "engine died", True)]
    status, body = completion_body("chat", "chatcmpl-9", 7, MODEL, 11, failed)
    assert status == 503 and body["error"]["code"] == "ENGINE_FAILED" and body["error"]["type"] == "server_error"
