"""Blocking calls the event loop hands to threads, each kind with threads of its own.

A call into the engine (tokenizing a prompt) may wait for a restarting engine for
as long as its deadline; a ledger look-up takes milliseconds. Sharing one pool, a
burst of the first would hold every thread and `/jobs` would stall behind them.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from anyio import CapacityLimiter, to_thread
from starlette.requests import Request

T = TypeVar("T")

ENGINE_CALL_THREADS = 16
LEDGER_CALL_THREADS = 8


class Offload:
    def __init__(self) -> None:
        self.engine = CapacityLimiter(ENGINE_CALL_THREADS)
        self.ledger = CapacityLimiter(LEDGER_CALL_THREADS)

    async def engine_call(self, fn: Callable[..., T], *args: object) -> T:
        return await to_thread.run_sync(fn, *args, limiter=self.engine)

    async def ledger_call(self, fn: Callable[..., T], *args: object) -> T:
        return await to_thread.run_sync(fn, *args, limiter=self.ledger)


def offload_of(request: Request) -> Offload:
    return request.app.state.offload
