"""A stream read on its own thread, so each event is stamped when it arrives.

The client shares two CPU cores with the server it measures: it reads the raw
bytes (`iter_raw`, no decoding layers) through the package's SSE reader.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

import httpx

from worker_orcd.client.sse import SseEvent, iter_events


def events_of(response: httpx.Response) -> Iterator[SseEvent]:
    """The events of a streamed response, read as raw bytes."""
    return iter_events(response.iter_raw())


_END = object()


class BackgroundEvents:
    """An SSE body read on its own thread, so each event is stamped when it arrives
    even while the caller is busy (sending a cancel). Iterate to take them in order.

    The stamp includes waiting for the GIL: keep the process's switch interval short.
    """

    def __init__(self, source: httpx.Response | Iterable[SseEvent]) -> None:
        """`source`: a streamed response, or the events of one (a worker_orcd.client Stream's)."""
        events = events_of(source) if isinstance(source, httpx.Response) else source
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, args=(events,), name="sse-reader", daemon=True)
        self._thread.start()

    def _read(self, events: Iterable[SseEvent]) -> None:
        try:
            for event in events:
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
