"""Reading a Server-Sent Events stream: bytes in, events out, each stamped when it was read.

The decoder is the worker's own (`worker_orcd.api.events`), named here for the
client's users: it takes raw byte chunks from any HTTP client, so it needs none.
"""

from __future__ import annotations

from worker_orcd.api.events import SseEvent, SseParser, aiter_events, iter_events

__all__ = ["SseEvent", "SseParser", "aiter_events", "iter_events"]
