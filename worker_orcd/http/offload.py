"""Blocking calls the event loop hands to threads, each kind with threads of its own.

A call into the engine (tokenizing a prompt) may wait for a restarting engine for
as long as its deadline; a ledger look-up takes milliseconds. Sharing one pool, a
burst of the first would hold every thread and `/jobs` would stall behind them.
Each kind is a plain executor: a ledger look-up stands before every job's first
token, and anyio's `to_thread` does far more per call (a cancel scope, a limiter,
detecting the async library) than `run_in_executor`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")

ENGINE_CALL_THREADS = 16
LEDGER_CALL_THREADS = 8


class Offload:
    def __init__(self) -> None:
        self.engine = ThreadPoolExecutor(ENGINE_CALL_THREADS, thread_name_prefix="engine-call")
        self.ledger = ThreadPoolExecutor(LEDGER_CALL_THREADS, thread_name_prefix="ledger-call")

    async def engine_call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.engine, fn, *args)

    async def ledger_call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.ledger, fn, *args)

    def close(self) -> None:
        """No new calls; the ones running finish on their own (each is bounded)."""
        self.engine.shutdown(wait=False, cancel_futures=True)
        self.ledger.shutdown(wait=False, cancel_futures=True)


def offload_of(request: Request) -> Offload:
    return request.app.state.offload
