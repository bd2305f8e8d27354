"""A job's stream on the wire: the encoder of its Server-Sent Events, and the one decoder.

Two framings travel: `/execute`'s, an `event: <name>` line and one `data:` line of
JSON per event (`started`, `token`*, then `end` or `error`: specs/contract.md,
"The event stream"), and OpenAI's, a `data:` line per chunk and `data: [DONE]` at the end
(or a `data: {"error": …}` chunk instead, WO-OAI-8). JSON escapes every newline, so
one `data:` line always holds a whole event.

Encoding: a token event is written without going through a dict (the hot path: one
JSON escape of its text in C and one format); every other event is rare.

Decoding: bytes in, events out, each stamped when it was read. It takes raw byte
chunks from any HTTP client, so it needs none. The benchmark reads a stream on the
same cores as the worker it measures, so this is a tight loop over bytes: each chunk
is split on blank lines with `bytes.find`, and an event's data is JSON-decoded only
when asked for (most token events are only counted and timed). Events that arrive in
one chunk share its stamp: the moment the client could first see them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Protocol

# JSON as every encoder here writes it: compact, UTF-8 unescaped, no NaN.
json_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
json_string = json.encoder.encode_basestring  # a str as JSON, in C, as json_text writes it

TERMINAL_NAMES = ("end", "error")
DATA = "data: "  # OpenAI's framing: each chunk is one data line …
EVENT_END = "\n\n"  # … and a blank line
DONE = "data: [DONE]\n\n"
_DONE_DATA = DONE[len(DATA) : -len(EVENT_END)]


class WireEvent(Protocol):
    """What the encoder needs of an event (worker_orcd.jobs.events.Event is one)."""

    @property
    def name(self) -> str: ...

    @property
    def data(self) -> dict[str, Any]: ...


# -- encoding --------------------------------------------------------------------------------


def encode_event(event: WireEvent) -> bytes:
    """`event: <name>` and one `data:` line of JSON."""
    return f"event: {event.name}\ndata: {json_text(event.data)}\n\n".encode()


def encode_token(text: str, index: int) -> bytes:
    """A token event as `encode_event` writes it, without going through a dict."""
    return f'event: token\ndata: {{"t":{json_string(text)},"i":{index}}}\n\n'.encode()


def encode_events(batch: Iterable[WireEvent]) -> bytes:
    """`/execute`'s encoding of a batch of events, in one write."""
    return b"".join(encode_token(e.data["t"], e.data["i"]) if e.name == "token" else encode_event(e) for e in batch)


def encode_data(value: Any) -> str:
    """One OpenAI-framed chunk: `data: <json>` and the blank line."""
    return DATA + json_text(value) + EVENT_END


# -- decoding --------------------------------------------------------------------------------

_UNREAD = object()
_NONE: tuple = ()


class SseEvent:
    """One event: its name, its data (the text as `raw`, JSON-decoded as `data`) and
    `at`, time.perf_counter() when the bytes that completed it were read."""

    __slots__ = ("_data", "at", "name", "raw")

    def __init__(self, name: str, raw: str, at: float) -> None:
        self.name = name
        self.raw = raw
        self.at = at
        self._data: Any = _UNREAD

    @property
    def data(self) -> Any:
        """The data as JSON; ValueError when it is not (OpenAI's `[DONE]`)."""
        if self._data is _UNREAD:
            self._data = json.loads(self.raw)
        return self._data

    def __repr__(self) -> str:
        return f"SseEvent({self.name!r}, {self.raw!r}, at={self.at:.6f})"


class SseParser:
    """The decoder: bytes a chunk at a time, the events each completes.

    Lines end in LF or CRLF (the worker writes LF, sse-starlette CRLF), the same
    throughout the stream: its first line end decides, so no chunk is rewritten.
    Comments (`: ping`) and blocks without data are skipped, `id:` and `retry:`
    ignored; several `data:` lines make one event's data, joined with LF. An event
    the stream ends in the middle of is never completed, as the SSE spec says.
    """

    __slots__ = ("_boundary", "_buf", "_line_end")

    def __init__(self) -> None:
        self._buf = b""
        self._boundary = b""  # the blank line between events, once the stream's line end is known
        self._line_end = "\n"

    def feed(self, chunk: bytes, _clock: Callable[[], float] = time.perf_counter) -> list[SseEvent] | tuple:
        """The events this chunk completes (often none), stamped now."""
        at = _clock()
        buf = self._buf
        buf = buf + chunk if buf else chunk
        boundary = self._boundary
        if not boundary:
            lf = buf.find(b"\n")
            if lf < 0:
                self._buf = buf
                return _NONE
            self._line_end = "\r\n" if lf and buf[lf - 1] == 13 else "\n"  # 13: CR
            self._boundary = boundary = (self._line_end * 2).encode()
        end = buf.find(boundary)
        if end < 0:
            self._buf = buf
            return _NONE
        line_end, step, start = self._line_end, len(boundary), 0
        found = []
        while end >= 0:
            event = _event(buf[start:end], line_end, at)
            if event is not None:
                found.append(event)
            start = end + step
            end = buf.find(boundary, start)
        self._buf = buf[start:]
        return found


def iter_events(chunks: Iterable[bytes]) -> Iterator[SseEvent]:
    """The events of an SSE byte stream, in order (SseParser's rules)."""
    feed = SseParser().feed
    for chunk in chunks:
        for event in feed(chunk):  # noqa: UP028  # a plain loop: cheaper than `yield from` per event
            yield event


async def aiter_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[SseEvent]:
    """iter_events for an async byte stream."""
    feed = SseParser().feed
    async for chunk in chunks:
        for event in feed(chunk):
            yield event


def _event(block: bytes, line_end: str, at: float) -> SseEvent | None:
    name = "message"
    data: str | None = None
    for line in block.decode().split(line_end):  # one decode per event, not per line
        if line.startswith("data:"):
            value = line[5:].removeprefix(" ")
            data = value if data is None else data + "\n" + value
        elif line.startswith("event:"):
            name = line[6:].removeprefix(" ")
    if data is None:
        return None
    return SseEvent(name, data, at)


# -- terminal events -------------------------------------------------------------------------


def is_terminal(event: SseEvent) -> bool:
    """Whether this `/execute` event ends its stream (nothing follows it, WO-JOB-2)."""
    return event.name in TERMINAL_NAMES


def is_done(event: SseEvent) -> bool:
    """OpenAI's `data: [DONE]`, after a stream's last chunk."""
    return event.raw == _DONE_DATA


def openai_error_of(event: SseEvent) -> dict[str, Any] | None:
    """The error object of an OpenAI `{"error": …}` chunk; None for any other chunk."""
    if '"error"' not in event.raw:  # most chunks are tokens: no JSON decode for them
        return None
    try:
        data = event.data
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def is_openai_terminal(event: SseEvent) -> bool:
    """Whether this OpenAI chunk ends its stream: `[DONE]`, or an error chunk instead."""
    return is_done(event) or openai_error_of(event) is not None
