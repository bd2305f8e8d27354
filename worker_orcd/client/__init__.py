"""Talking to a worker from Python: `Client`, `AsyncClient`, the typed events of a job's
stream and the exceptions for the worker's error codes.

    from worker_orcd.client import Client, Token

    with Client("http://127.0.0.1:8080") as client:
        with client.stream("Write a haiku", max_tokens=64) as events:
            for event in events:
                if isinstance(event, Token):
                    print(event.text, end="", flush=True)

The clients need httpx (`pip install "worker-orcd[client]"`); the events, the errors
and the SSE reader (`worker_orcd.client.sse`) do not, so importing this package never
needs it: only `Client`, `AsyncClient` and their streams do, when first named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker_orcd.client.errors import (
    Forbidden,
    IncompleteStream,
    InvalidRequest,
    JobExists,
    NotFound,
    QueueFull,
    Unauthorized,
    Unavailable,
    WorkerError,
)
from worker_orcd.client.events import End, Error, OtherEvent, Started, StreamEvent, Token, from_sse

if TYPE_CHECKING:
    from worker_orcd.client._client import AsyncClient, AsyncStream, Client, Stream

_NEED_HTTPX = ("Client", "AsyncClient", "Stream", "AsyncStream")

__all__ = [
    "AsyncClient",
    "AsyncStream",
    "Client",
    "End",
    "Error",
    "Forbidden",
    "IncompleteStream",
    "InvalidRequest",
    "JobExists",
    "NotFound",
    "OtherEvent",
    "QueueFull",
    "Started",
    "Stream",
    "StreamEvent",
    "Token",
    "Unauthorized",
    "Unavailable",
    "WorkerError",
    "from_sse",
]


def __getattr__(name: str) -> Any:
    if name in _NEED_HTTPX:
        from worker_orcd.client import _client  # raises ImportError naming the extra without httpx

        return getattr(_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
