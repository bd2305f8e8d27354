"""Questions to the engine and their answers: request numbers mapped to waiting requests.

The engine has the vocabulary, so tokenizing is a round trip: `Tokenize` with a
request number, `Tokens` with the same number back. A request is waited on by a
thread (`Request.wait`) or, on the loop that reads the channels, by a coroutine
(`Request.wait_on_loop`), with no thread between. An engine that ends drops its
requests: their callers ask its successor.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import TYPE_CHECKING

from worker_orcd.channel.messages import Tokenize, Tokens

if TYPE_CHECKING:
    from worker_orcd.supervisor.lifecycle import Engine


class Request:
    """One question to one engine; its answer is `tokens`, None while there is none (or
    the engine went before it answered)."""

    __slots__ = ("_answered", "_done", "_loop", "engine", "number", "tokens")

    def __init__(self, number: int, engine: Engine, loop: asyncio.AbstractEventLoop, *, on_loop: bool) -> None:
        """`on_loop`: its caller waits on `loop` (the request is made there)."""
        self.number = number
        self.engine = engine
        self.tokens: list[list[int]] | None = None
        self._done = threading.Event()
        self._loop = loop
        self._answered: asyncio.Future[None] | None = loop.create_future() if on_loop else None

    def answer(self, tokens: list[list[int]]) -> None:
        """On the loop: the engine's answer."""
        self.tokens = tokens
        self._done.set()
        _wake(self._answered)

    def drop(self) -> None:
        """From any thread but the loop: the engine has gone without answering."""
        self._done.set()
        if self._answered is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, self._answered)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def wait(self, timeout: float) -> list[list[int]] | None:
        self._done.wait(timeout)
        return self.tokens

    async def wait_on_loop(self, timeout: float) -> list[list[int]] | None:
        assert self._answered is not None, "a request made for a thread"
        try:
            await asyncio.wait_for(self._answered, timeout)
        except TimeoutError:
            pass
        return self.tokens


class EngineClient:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._numbers = itertools.count(1)
        self._requests: dict[int, Request] = {}
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Requests still registered (asked, not yet forgotten)."""
        return len(self._requests)

    def tokenize(self, engine: Engine, texts: list[tuple[str, bool]], *, on_loop: bool = False) -> Request:
        """Ask `engine` for the tokens of each (text, add_special); `forget` the request once
        it has been waited on. `on_loop`: asked, and waited on, on the channels' loop."""
        with self._lock:
            number = next(self._numbers)
            request = self._requests[number] = Request(number, engine, self._loop, on_loop=on_loop)
        if engine.gone:  # gone before it was registered: `engine_gone` did not see it
            request.drop()
            return request
        try:
            engine.process.channel.send(Tokenize(number, texts))
        except OSError:
            pass  # it is going: its end drops the request
        return request

    def forget(self, request: Request) -> None:
        with self._lock:
            self._requests.pop(request.number, None)

    def answered(self, message: Tokens) -> None:
        """On the loop: an engine's answer."""
        with self._lock:
            request = self._requests.get(message.request)
        if request is not None:
            request.answer(message.tokens)

    def engine_gone(self, engine: Engine) -> None:
        """The engine has ended (marked gone first): its requests get no answer."""
        with self._lock:
            dropped = [r for r in self._requests.values() if r.engine is engine]
        for request in dropped:
            request.drop()


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
