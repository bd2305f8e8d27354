"""A job's events → OpenAI's answers: stream chunks (`data: {...}`), or one JSON body.

Per token the stream costs one `json` encoding of the token's text: each
chunk's JSON around it (id, object, created, model, choices) is built once per
request, so a token chunk is `prefix + json(text) + suffix` (WO-OAI-11). The
framing (`data:` lines, `[DONE]`) and the error envelope are `worker_orcd.api`'s.
"""

from __future__ import annotations

from typing import Any

from worker_orcd.api.errors import OpenAIErrorEnvelope, openai_error_body, status_of
from worker_orcd.api.events import DATA, DONE, EVENT_END, encode_data, json_string, json_text
from worker_orcd.http.openai.params import CHAT
from worker_orcd.jobs.events import Event

# The worker's stop_reason → OpenAI's finish_reason.
FINISH_REASON = {"eos": "stop", "stop": "stop", "max_tokens": "length"}
# The fields of the worker's error event besides code and message, kept in OpenAI's error object.
_ERROR_EXTRAS = ("retriable", "tokens_out", "stop_ms", "cancel_ms", "forced")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def job_error(data: dict[str, Any]) -> OpenAIErrorEnvelope:
    """A job's terminal `error` event in OpenAI's error envelope, with the worker's extra fields."""
    code = data["code"]
    extras = {k: data[k] for k in _ERROR_EXTRAS if k in data}
    return openai_error_body(status_of(code), data["message"], code, **extras)


class StreamEncoder:
    """Encodes batches of a job's events as OpenAI stream chunks.

    Chat: a first chunk with `delta.role` once the job starts, one chunk per
    token event with `delta.content`, a last chunk with an empty delta and the
    finish reason. Completions: `choices[0].text`, then the finish reason. With
    `include_usage`, every chunk has `"usage": null` and one more chunk, with
    empty `choices`, carries the usage. Then `data: [DONE]`. A job that ends in
    an error ends with `data: {"error": {...}}` instead (WO-OAI-8).
    """

    __slots__ = ("_chat", "_head", "_prefix", "_prompt_tokens", "_suffix", "_usage")

    def __init__(
        self, kind: str, completion_id: str, created: int, model: str, prompt_tokens: int, include_usage: bool
    ) -> None:
        self._chat = kind == CHAT
        self._usage = include_usage
        self._prompt_tokens = prompt_tokens
        obj = "chat.completion.chunk" if self._chat else "text_completion"
        # '{"id":…,"object":…,"created":…,"model":…' — each chunk goes on from here.
        self._head = DATA + json_text({"id": completion_id, "object": obj, "created": created, "model": model})[:-1]
        tail = (',"usage":null}' if include_usage else "}") + EVENT_END
        if self._chat:
            self._prefix = self._head + ',"choices":[{"index":0,"delta":{"content":'
            self._suffix = '},"logprobs":null,"finish_reason":null}]' + tail
        else:
            self._prefix = self._head + ',"choices":[{"text":'
            self._suffix = ',"index":0,"logprobs":null,"finish_reason":null}]' + tail

    def __call__(self, batch: list[Event]) -> bytes:
        prefix, suffix = self._prefix, self._suffix
        parts = []
        for event in batch:
            if event.name == "token":
                parts.append(prefix + json_string(event.data["t"]) + suffix)
            else:
                parts.append(self._other(event))
        return "".join(parts).encode()

    def _chunk(self, choices: list[dict[str, Any]], usage_value: Any = None) -> str:
        rest: dict[str, Any] = {"choices": choices}
        if self._usage:
            rest["usage"] = usage_value
        return self._head + "," + json_text(rest)[1:] + EVENT_END

    def _other(self, event: Event) -> str:
        if event.name == "started":
            if not self._chat:
                return ""
            delta = {"role": "assistant", "content": "", "refusal": None}
            return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
        if event.name == "end":
            data = event.data
            finish = FINISH_REASON.get(data["stop_reason"], "stop")
            if self._chat:
                choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": finish}
            out = self._chunk([choice])
            if self._usage:
                out += self._chunk([], usage(self._prompt_tokens, data["tokens_out"]))
            return out + DONE
        if event.name == "error":
            return encode_data(job_error(event.data))
        return ""


def completion_body(
    kind: str, completion_id: str, created: int, model: str, prompt_tokens: int, events: list[Event]
) -> tuple[int, dict[str, Any]]:
    """The non-streaming answer, status and body, from the job's events."""
    last = events[-1]
    if last.name == "error":
        return status_of(last.data["code"]), dict(job_error(last.data))
    text = "".join(e.data["t"] for e in events if e.name == "token")
    finish = FINISH_REASON.get(last.data["stop_reason"], "stop")
    if kind == CHAT:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish,
        }
        obj = "chat.completion"
    else:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    body = {
        "id": completion_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(prompt_tokens, last.data["tokens_out"]),
    }
    return 200, body
