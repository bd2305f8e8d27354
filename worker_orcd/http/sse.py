"""Events → Server-Sent Events, and the hand-over from the engine's side.

The channel's reader and the dispatcher never touch HTTP: they put events into
an EventChannel, which wakes the event loop only when the stream is waiting. The stream sends
everything that has piled up in one write.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque

from worker_orcd.jobs.events import Event

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def encode_event(event: Event) -> bytes:
    """`event: <name>` and one `data:` line of JSON (JSON escapes every newline)."""
    return f"event: {event.name}\ndata: {_dumps(event.data)}\n\n".encode()


class EventChannel:
    """Many producers on any thread, one asyncio consumer."""

    __slots__ = ("_loop", "_events", "_lock", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                pass

    async def get_all(self) -> list[Event]:
        """Every event put since the last call; waits for at least one."""
        with self._lock:
            if not self._events:
                self._waiter = waiter = self._loop.create_future()
            else:
                waiter = None
        if waiter is not None:
            await waiter
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
