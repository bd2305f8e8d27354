"""The events of a job's stream as typed values (specs/contract.md, "The event stream").

Each event has the contract's fields as attributes, `at` (time.perf_counter()
when the client read it, from the SSE reader), `data` (the event's whole JSON
object, fields this client does not know included) and `name` (`started`,
`token`, `end`, `error`), so code written against raw SSE events reads these too.
Building one costs a JSON decode and a constructor call, about a microsecond.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from worker_orcd.api.events import SseEvent
from worker_orcd.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class _Event:
    """What every event has besides its own fields (keywords: after them)."""

    at: float = field(default=0.0, compare=False, kw_only=True)
    data: Any = field(default_factory=dict, repr=False, compare=False, kw_only=True)
    terminal: ClassVar[bool] = False

    @property
    def raw(self) -> str:
        return json.dumps(self.data)


@dataclass(frozen=True, slots=True)
class Started(_Event):
    """The job left the queue and runs."""

    job_id: str
    model: str | None
    started_at: str | None
    seed: int | None
    prompt_tokens: int | None
    correlation_id: str | None
    name: ClassVar[str] = "started"


@dataclass(frozen=True, slots=True)
class Token(_Event):
    """Text, always whole UTF-8 characters; `index` counts events from 0, without gaps."""

    text: str
    index: int
    name: ClassVar[str] = "token"


@dataclass(frozen=True, slots=True)
class End(_Event):
    """The job completed: `stop_reason` is `eos`, `max_tokens` or `stop`."""

    stop_reason: str
    tokens_out: int
    decode_time_ms: float | None
    name: ClassVar[str] = "end"
    terminal: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Error(_Event):
    """The job ended without completing: `code` is one of WO-SSE-4 (`CANCELLED` for a
    cancel, with `tokens_out`, `stop_ms`, `cancel_ms`, and `forced` when the engine
    had to be killed)."""

    code: str
    message: str
    retriable: bool
    tokens_out: int | None = None
    stop_ms: float | None = None
    cancel_ms: float | None = None
    forced: bool = False
    name: ClassVar[str] = "error"
    terminal: ClassVar[bool] = True

    @property
    def cancelled(self) -> bool:
        return self.code == ErrorCode.CANCELLED


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """An event this client does not know (a newer worker's); passed on, not dropped."""

    name: str
    data: Any = field(default=None, compare=False)
    at: float = field(default=0.0, compare=False)
    terminal: ClassVar[bool] = False
    raw = _Event.raw


StreamEvent = Started | Token | End | Error | OtherEvent


def _started(d: dict[str, Any], at: float) -> Started:
    g = d.get
    return Started(
        d["job_id"], g("model"), g("started_at"), g("seed"), g("prompt_tokens"), g("correlation_id"), at=at, data=d
    )


def _token(d: dict[str, Any], at: float) -> Token:
    return Token(d["t"], d["i"], at=at, data=d)


def _end(d: dict[str, Any], at: float) -> End:
    return End(d["stop_reason"], d["tokens_out"], d.get("decode_time_ms"), at=at, data=d)


def _error(d: dict[str, Any], at: float) -> Error:
    g = d.get
    return Error(
        d["code"],
        g("message", ""),
        bool(g("retriable", False)),
        g("tokens_out"),
        g("stop_ms"),
        g("cancel_ms"),
        bool(g("forced", False)),
        at=at,
        data=d,
    )


_BUILDERS: dict[str, Callable[[dict[str, Any], float], StreamEvent]] = {
    "token": _token,
    "started": _started,
    "end": _end,
    "error": _error,
}


def from_sse(event: SseEvent) -> StreamEvent:
    """The typed event for one read from the wire; ValueError when its data is not the
    contract's (not JSON, or a field missing)."""
    build = _BUILDERS.get(event.name)
    if build is None:
        try:
            data = event.data
        except ValueError:
            data = event.raw
        return OtherEvent(event.name, data, event.at)
    try:
        return build(event.data, event.at)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {event.name} event: {event.raw!r}") from exc
