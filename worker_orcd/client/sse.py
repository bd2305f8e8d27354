"""Reading a Server-Sent Events stream: bytes in, events out, each stamped when it was read.

It takes raw byte chunks from any HTTP client, so the package needs none. The
benchmark reads a stream on the same cores as the worker it measures, so this
is a tight loop over bytes: each chunk is split on blank lines with
`bytes.find`, and an event's data is JSON-decoded only when asked for (most
token events are only counted and timed). Events that arrive in one chunk share
its stamp: the moment the client could first see them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

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
        """The data as JSON; ValueError when it is not (llama-cpp-python's `[DONE]`)."""
        if self._data is _UNREAD:
            self._data = json.loads(self.raw)
        return self._data

    def __repr__(self) -> str:
        return f"SseEvent({self.name!r}, {self.raw!r}, at={self.at:.6f})"


class SseParser:
    """iter_events a chunk at a time, for readers that cannot hand over an iterable
    (async ones); the same rules."""

    __slots__ = ("_boundary", "_buf", "_line_end")

    def __init__(self) -> None:
        self._buf = b""
        self._boundary = b""  # the blank line between events, once the stream's line end is known
        self._line_end = "\n"

    def feed(self, chunk: bytes) -> list[SseEvent] | tuple:
        """The events this chunk completes (often none), stamped now."""
        at = time.perf_counter()
        buf = self._buf + chunk if self._buf else chunk
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
    """The events of an SSE byte stream, in order.

    Lines end in LF or CRLF (the worker writes LF, sse-starlette CRLF), the same
    throughout the stream: its first line end decides, so no chunk is rewritten.
    Comments (`: ping`) and blocks without data are skipped, `id:` and `retry:`
    ignored; several `data:` lines make one event's data, joined with LF. An event
    the stream ends in the middle of is dropped, as the SSE spec says.

    A plain loop over local names: SseParser does the same a chunk at a time for
    async readers, at some cost per event that this path does not pay.
    """
    clock = time.perf_counter
    buf = b""
    boundary = b""  # the blank line between events, once the stream's line end is known
    for chunk in chunks:
        at = clock()
        buf += chunk
        if not boundary:
            lf = buf.find(b"\n")
            if lf < 0:
                continue
            line_end = "\r\n" if lf and buf[lf - 1] == 13 else "\n"  # 13: CR
            boundary = (line_end * 2).encode()
            step = len(boundary)
        start = 0
        while True:
            end = buf.find(boundary, start)
            if end < 0:
                break
            event = _event(buf[start:end], line_end, at)
            start = end + step
            if event is not None:
                yield event
        if start:
            buf = buf[start:]


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
