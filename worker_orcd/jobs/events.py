"""The events a job emits, in order: `started`, `token`*, then one terminal event.

Events are plain data; how they travel (SSE) is the HTTP layer's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker_orcd.errors import ErrorCode

CANCELLED_MESSAGE = "Job cancelled by client request"


@dataclass(frozen=True, slots=True)
class Event:
    name: str  # "started" | "token" | "end" | "error"
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.name in ("end", "error")


EventSink = Callable[[Event], None]
"""Receives a job's events; called from any thread, must not block."""


def started(
    job_id: str,
    model: str,
    started_at: str,
    seed: int,
    prompt_tokens: int,
    correlation_id: str | None,
) -> Event:
    return Event(
        "started",
        {
            "job_id": job_id,
            "model": model,
            "started_at": started_at,
            "seed": seed,
            "prompt_tokens": prompt_tokens,
            "correlation_id": correlation_id,
        },
    )


def token(text: str, index: int) -> Event:
    return Event("token", {"t": text, "i": index})


def end(tokens_out: int, decode_time_ms: float, stop_reason: str) -> Event:
    return Event(
        "end",
        {"tokens_out": tokens_out, "decode_time_ms": decode_time_ms, "stop_reason": stop_reason},
    )


def error(code: ErrorCode, message: str, retriable: bool, **extra: Any) -> Event:
    return Event("error", {"code": code.value, "message": message, "retriable": retriable, **extra})
