"""UTF-8 on the wire (WO-SSE-1): Chinese and emoji, split across tokens by the model, arrive whole."""

from __future__ import annotations

import json

import pytest

from testkit.prompts import CHAT
from testkit.streams import job_of, uid

pytestmark = pytest.mark.usefixtures("worker_idle")

# Greedy SmolLM2 answers this with "Repeat exactly: 你好世界🎉…": CJK characters and a
# 4-byte emoji, each spread over several byte-level tokens.
PROMPT = CHAT.format("Repeat exactly: \u6211\u7231\u4f60 \U0001f600 \u4f60\u597d\u4e16\u754c \U0001f389")


def _raw_events(client, body):
    """POST /execute and parse the SSE bytes ourselves, decoding each event strictly."""
    with client.stream("POST", "/execute", json=body) as r:
        assert r.status_code == 200
        assert "charset" not in r.headers["content-type"] or "utf-8" in r.headers["content-type"].lower()
        raw = b"".join(r.iter_bytes())
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        text = block.decode("utf-8")  # raises on any invalid byte sequence
        name, data = None, None
        for line in text.split("\n"):
            if line.startswith(":"):
                continue
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
        events.append((name, data))
    return events


def test_chinese_and_emoji_arrive_whole(client):
    job_id = uid("utf8")
    events = _raw_events(client, {"job_id": job_id, "prompt": PROMPT, "max_tokens": 24, "temperature": 0})
    tokens = [data for name, data in events if name == "token"]
    name, end = events[-1]
    assert name == "end"

    text = "".join(t["t"] for t in tokens)
    for t in tokens:
        assert "\ufffd" not in t["t"]
        t["t"].encode("utf-8")  # no lone surrogates either
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text  # Chinese really came out
    assert any(ord(ch) > 0xFFFF for ch in text), text  # and an emoji beyond the BMP
    # Some characters took several tokens: fewer events than model tokens.
    assert len(tokens) < end["tokens_out"]
    assert [t["i"] for t in tokens] == list(range(len(tokens)))
    assert job_of(client, job_id)["text"] == text


def test_non_ascii_prompt_and_stop(client):
    # A stop string of multi-byte characters is matched on whole characters.
    job_id = uid("utf8-stop")
    events = _raw_events(
        client,
        {"job_id": job_id, "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stop": ["\u4e16\u754c"]},
    )
    name, end = events[-1]
    assert name == "end" and end["stop_reason"] == "stop"
    text = "".join(d["t"] for n, d in events if n == "token")
    assert text.endswith("\u4f60\u597d") and "\u4e16" not in text
    assert job_of(client, job_id)["text"] == text
