"""A lean Server-Sent Events reader that stamps each event with its arrival time.

The client shares two CPU cores with the server it measures, so it parses raw
bytes itself rather than going through line iterators: every microsecond it
spends per token is a microsecond the engine does not get. Events that arrive
in one read share its timestamp, which is when the client could first see them.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import httpx


@dataclass(slots=True)
class SseEvent:
    name: str
    raw: str  # the data field, undecoded
    at: float  # time.perf_counter() when the bytes holding it were read

    def json(self) -> Any:
        return json.loads(self.raw)


def iter_events(response: httpx.Response) -> Iterator[SseEvent]:
    """Parse an SSE body into events; comments (keep-alive pings) are skipped.

    Accepts LF and CRLF line endings (sse-starlette's default is CRLF).
    """
    buf = b""
    sep = b""
    for chunk in response.iter_raw():
        at = time.perf_counter()
        buf += chunk
        if not sep:
            if b"\r\n" in buf:
                sep = b"\r\n"
            elif b"\n" in buf:
                sep = b"\n"
            else:
                continue
        boundary = sep + sep
        while True:
            end = buf.find(boundary)
            if end < 0:
                break
            block = buf[:end]
            buf = buf[end + len(boundary) :]
            event = _parse_block(block, sep, at)
            if event is not None:
                yield event


def _parse_block(block: bytes, sep: bytes, at: float) -> SseEvent | None:
    name = "message"
    data: list[str] = []
    for line in block.split(sep):
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" ").decode())
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode()
    if not data:
        return None
    return SseEvent(name, "\n".join(data), at)


_END = object()


class BackgroundEvents:
    """An SSE body read on its own thread, so each event is stamped when it arrives
    even while the caller is busy (sending a cancel). Iterate to take them in order.

    The stamp includes waiting for the GIL: keep the process's switch interval short.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, args=(response,), name="sse-reader", daemon=True)
        self._thread.start()

    def _read(self, response: httpx.Response) -> None:
        try:
            for event in iter_events(response):
                self._queue.put(event)
        except Exception as exc:  # the stream failed, or was closed under it
            self._queue.put(exc)
        finally:
            self._queue.put(_END)

    def __iter__(self) -> "BackgroundEvents":
        return self

    def __next__(self) -> SseEvent:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # stay exhausted
            raise StopIteration
        if isinstance(item, Exception):
            raise item
        return item

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
