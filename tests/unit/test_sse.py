"""SSE encoding and the EventChannel between the inference thread and the event loop
(specs/contract.md, "The event stream")."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker_orcd.api.events import encode_event, encode_events, encode_token
from worker_orcd.http import sse
from worker_orcd.http.sse import EventStream
from worker_orcd.jobs import events
from worker_orcd.jobs.event_channel import EventChannel
from worker_orcd.jobs.events import Event

SCOPE = {"type": "http", "method": "POST"}


def _parse(raw: bytes) -> tuple[str, dict]:
    text = raw.decode("utf-8")  # strict: the wire is valid UTF-8
    assert text.endswith("\n\n")
    lines = text[:-2].split("\n")
    assert len(lines) == 2, lines  # exactly `event:` and one `data:` line
    assert lines[0].startswith("event: ") and lines[1].startswith("data: ")
    return lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])


def test_token_event_wire_format():
    assert encode_event(events.token("Hi", 0)) == b'event: token\ndata: {"t":"Hi","i":0}\n\n'


@pytest.mark.parametrize(
    "text",
    ["line one\nline two", "\r\n\r\n", "data: fake\n\nevent: end", "tab\there", "\u2028\u2029", "\x00\x1f"],
)
def test_newlines_in_text_stay_in_one_data_line(text):
    name, data = _parse(encode_event(events.token(text, 3)))
    assert name == "token" and data == {"t": text, "i": 3}


def test_non_ascii_is_sent_as_utf8_not_escaped():
    raw = encode_event(events.token("\u4f60\u597d\U0001f389", 0))
    assert "\u4f60\u597d\U0001f389".encode() in raw
    assert _parse(raw)[1]["t"] == "\u4f60\u597d\U0001f389"


def test_every_event_kind_roundtrips():
    from worker_orcd.errors import ErrorCode

    for event in (
        events.started("j", "m.gguf", "2026-11-25T12:00:00.123Z", 2**64 - 1, 12, "cid"),
        events.token("x", 7),
        events.end(5, 12.5, "eos"),
        events.error(
            ErrorCode.CANCELLED, events.CANCELLED_MESSAGE, False, tokens_out=2, stop_ms=1.0, cancel_ms=2.0
        ),
    ):
        name, data = _parse(encode_event(event))
        assert name == event.name and data == event.data
    # 64-bit seeds survive as exact integers.
    assert _parse(encode_event(events.started("j", "m", "t", 2**64 - 1, 1, None)))[1]["seed"] == 2**64 - 1


def test_non_finite_numbers_are_refused():
    with pytest.raises(ValueError):
        encode_event(Event("end", {"decode_time_ms": float("nan")}))


def test_terminal_property():
    assert events.end(1, 1.0, "eos").terminal
    assert Event("error", {}).terminal
    assert not events.token("a", 0).terminal
    assert not events.started("j", "m", "t", 1, 1, None).terminal


# -- EventChannel --------------------------------------------------------------------------


def test_channel_delivers_in_order_from_another_thread():
    async def main() -> list[Event]:
        channel = EventChannel(asyncio.get_running_loop())
        sent = [events.token(str(i), i) for i in range(200)] + [events.end(200, 1.0, "max_tokens")]

        def producer() -> None:
            for e in sent:
                channel.put(e)

        t = threading.Thread(target=producer)
        t.start()
        got: list[Event] = []
        while not (got and got[-1].terminal):
            batch = await asyncio.wait_for(channel.get_all(), 10)
            assert batch  # never wakes with nothing
            got.extend(batch)
        t.join()
        assert got == sent
        return got

    asyncio.run(main())


def test_get_all_waits_for_a_put():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        channel = EventChannel(loop)
        waiting = asyncio.ensure_future(channel.get_all())
        await asyncio.sleep(0)  # let it register as the waiter
        assert not waiting.done()
        threading.Thread(target=channel.put, args=(events.token("a", 0),)).start()
        assert await asyncio.wait_for(waiting, 10) == [events.token("a", 0)]

    asyncio.run(main())


def test_events_put_before_get_are_batched():
    async def main() -> None:
        channel = EventChannel(asyncio.get_running_loop())
        for i in range(3):
            channel.put(events.token(str(i), i))
        assert [e.data["i"] for e in await channel.get_all()] == [0, 1, 2]
        # Drained: the next call waits again.
        pending = asyncio.ensure_future(channel.get_all())
        await asyncio.sleep(0)
        assert not pending.done()
        channel.put(events.end(3, 1.0, "eos"))
        assert [e.name for e in await asyncio.wait_for(pending, 10)] == ["end"]

    asyncio.run(main())


@settings(max_examples=300, deadline=None)
@given(text=st.text(), index=st.integers(min_value=0, max_value=10**6))
def test_the_token_fast_path_writes_what_encode_event_writes(text, index):
    assert encode_token(text, index) == encode_event(events.token(text, index))
    batch = [events.token(text, index), events.end(1, 2.0, "eos")]
    assert encode_events(batch) == b"".join(map(encode_event, batch))


def test_a_nudge_is_kept_for_the_next_get():
    async def run() -> list:
        channel = EventChannel(asyncio.get_running_loop())
        channel.nudge()  # nobody waiting yet: the next get_all must not wait
        first = await asyncio.wait_for(channel.get_all(), 1)
        channel.put(events.token("a", 0))
        second = await channel.get_all()
        return [first, second]

    first, second = asyncio.run(run())
    assert first == [] and [e.name for e in second] == ["token"]


class _Client:
    """An ASGI server's side of one streamed answer: what was sent, and a disconnect to give."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.gone = asyncio.Event()

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def test_the_stream_writes_batches_then_ends_after_the_terminal_event():
    ended = []

    async def run(client: _Client) -> None:
        channel = EventChannel(asyncio.get_running_loop())
        stream = EventStream(channel, encode_events, lambda: ended.append(True), {"X-Request-Id": "r1"})
        task = asyncio.create_task(stream(SCOPE, client.receive, client.send))
        for i in range(3):
            channel.put(events.token(str(i), i))
        await asyncio.sleep(0)
        channel.put(events.end(3, 1.0, "eos"))
        await asyncio.wait_for(task, 1)

    client = _Client()
    asyncio.run(run(client))
    start = client.sent[0]
    assert start["type"] == "http.response.start" and (b"x-request-id", b"r1") in start["headers"]
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    names = [_parse(block + b"\n\n")[0] for block in client.body().split(b"\n\n") if block]
    assert names == ["token", "token", "token", "end"]
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert ended == [True]


def test_a_client_that_goes_away_ends_the_stream_and_calls_on_end_once():
    ended = []

    async def run(client: _Client) -> None:
        channel = EventChannel(asyncio.get_running_loop())
        stream = EventStream(channel, encode_events, lambda: ended.append(True))
        task = asyncio.create_task(stream(SCOPE, client.receive, client.send))
        channel.put(events.token("a", 0))
        await asyncio.sleep(0.01)
        client.gone.set()  # no event comes after: the nudge alone ends it
        await asyncio.wait_for(task, 1)

    client = _Client()
    asyncio.run(run(client))
    assert ended == [True] and b"event: token" in client.body()


def test_a_silent_stream_gets_pings(monkeypatch):
    monkeypatch.setattr(sse, "PING_SEC", 0.02)

    async def run(client: _Client) -> None:
        channel = EventChannel(asyncio.get_running_loop())
        stream = EventStream(channel, encode_events, lambda: None)
        task = asyncio.create_task(stream(SCOPE, client.receive, client.send))
        while client.body().count(sse.PING) < 2:
            await asyncio.sleep(0.01)
        channel.put(events.end(0, 0.0, "eos"))
        await asyncio.wait_for(task, 1)

    client = _Client()
    asyncio.run(asyncio.wait_for(run(client), 5))
    assert client.body().startswith(sse.PING) and client.body().endswith(b"\n\n")
