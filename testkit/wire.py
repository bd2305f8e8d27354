"""A stream's events as the wire carried them, parsed by httpx-sse."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
from httpx_sse import EventSource


@dataclass(frozen=True, slots=True)
class WireEvent:
    """One event as the wire carried it: `name`, `raw` (its data), `data` (that data as
    JSON) and `at` (time.perf_counter() when it was parsed)."""

    name: str
    raw: str
    at: float

    @property
    def data(self) -> Any:
        return json.loads(self.raw)


def iter_events(response: httpx.Response) -> Iterator[WireEvent]:
    """A streamed response's events as they arrive, keep-alive comments skipped.

    Parsed by httpx-sse, not by the package's own reader (worker_orcd.client), which
    stops at the first terminal event: what the tests check is what the wire carried.
    """
    for event in EventSource(response).iter_sse():
        yield WireEvent(event.event, event.data, time.perf_counter())


def read_events(response: httpx.Response) -> list[WireEvent]:
    """Every event of a streamed response, read to the end of the connection: a second
    terminal event, or anything after the first, is in the list for the test to see."""
    return list(iter_events(response))


def execute(client: httpx.Client, body: dict[str, Any], **kwargs: Any) -> list[WireEvent]:
    """POST /execute and read the stream to the end of the connection."""
    with client.stream("POST", "/execute", json=body, **kwargs) as response:
        assert response.status_code == 200, response.read()
        return read_events(response)


def text_of(events: list[WireEvent]) -> str:
    return "".join(e.data["t"] for e in events if e.name == "token")
