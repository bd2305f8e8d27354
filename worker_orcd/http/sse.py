"""Events → Server-Sent Events, and the hand-over from the engine's side.

The channel's reader (on the event loop) and the dispatcher (a thread) never touch
HTTP: they put events into an EventChannel, which wakes the stream only when it is
waiting, at once from the loop itself and through the loop from a thread. The stream
(`EventStream`) sends everything that has piled up in one write.

Per token the stream does one wait, one encode and one write: no task group, no
cancel scope, no lock per message (what a general SSE response pays for pings and
timeouts). Keep-alive pings and the client's disconnect come in through the same
channel, as an empty wake-up, so the token path checks nothing for them. A stalled
reader is bounded below, by the connection's protocol (WO-LIMIT-5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from worker_orcd.jobs.event_channel import EventChannel
from worker_orcd.jobs.events import Event

PING_SEC = 15  # a comment on a stream silent this long, so proxies keep it open
PING = b": ping\n\n"
RAW_SEND = "worker_orcd.send"  # the server's own send, put in the scope by the app (app.py)
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]


class EventStream:
    """A job's events as an SSE response, ending after its terminal event.

    `on_end` runs however the stream ends: after the terminal event, or when the
    client went away first (it cancels the job then). The response's start goes
    through the app's middleware; its body, written per token, goes to the server's
    own `send` (RAW_SEND), as the middleware acts on the start only.
    """

    def __init__(
        self,
        channel: EventChannel,
        encode: Callable[[list[Event]], bytes],
        on_end: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.channel = channel
        self.encode = encode
        self.on_end = on_end
        self.headers = HEADERS + [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        self.gone = False
        self._writes = 0
        self._ticker: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(self._watch(receive))
        self._ticker = loop.call_later(PING_SEC, self._tick, loop, 0)
        pump = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            # Its own task: each token then resumes this one frame, not the request's
            # whole stack of middleware coroutines beneath it.
            pump = loop.create_task(self._pump(scope.get(RAW_SEND, send)))
            await pump
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            watcher.cancel()
            if self._ticker is not None:
                self._ticker.cancel()
            self.on_end()

    async def _pump(self, write: Send) -> None:
        get_all, encode = self.channel.get_all, self.encode
        while True:
            batch = await get_all()
            if self.gone:  # nudged when the client went away
                return
            if not batch:  # a nudge: a ping is due
                await write({"type": "http.response.body", "body": PING, "more_body": True})
                continue
            data = encode(batch)
            if data:  # a completion stream has nothing to say when its job starts
                self._writes += 1
                await write({"type": "http.response.body", "body": data, "more_body": True})
            if batch[-1].terminal:  # nothing is ever emitted after it
                break
        await write({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, receive: Receive) -> None:
        """Until the client goes away (the request's body was read whole before)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self.channel.nudge()

    def _tick(self, loop: asyncio.AbstractEventLoop, seen: int) -> None:
        if self._writes == seen:  # nothing written for PING_SEC
            self.channel.nudge()
        self._ticker = loop.call_later(PING_SEC, self._tick, loop, self._writes)
