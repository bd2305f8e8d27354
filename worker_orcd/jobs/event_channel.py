"""The hand-over of a job's events from the engine's side to its stream on the event loop.

The channel's reader (on the event loop) and the dispatcher (a thread) never touch
HTTP: they put events into an EventChannel, which wakes the consumer only when it is
waiting, at once from the loop itself and through the loop from a thread. The
consumer takes everything that has piled up in one call.
"""

from __future__ import annotations

import asyncio
import threading
from asyncio.events import _get_running_loop as _running_loop
from collections import deque

from worker_orcd.jobs.events import Event


class EventChannel:
    """Many producers on any thread, one asyncio consumer."""

    __slots__ = ("_events", "_lock", "_loop", "_nudged", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._nudged = False

    def put(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._wake(waiter)

    def nudge(self) -> None:
        """Wake the consumer, or have its next `get_all` return at once, even with nothing."""
        with self._lock:
            self._nudged = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._wake(waiter)

    async def get_all(self) -> list[Event]:
        """Every event put since the last call; waits for at least one, or a nudge."""
        with self._lock:
            if not self._events and not self._nudged:
                self._waiter = waiter = self._loop.create_future()
            else:
                waiter = None
        if waiter is not None:
            await waiter
        with self._lock:
            events = list(self._events)
            self._events.clear()
            self._nudged = False
        return events

    def _wake(self, waiter: asyncio.Future[None]) -> None:
        if _running_loop() is self._loop:  # the channel's reader, on the loop itself
            _set(waiter)
            return
        try:
            self._loop.call_soon_threadsafe(_set, waiter)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


def _set(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
