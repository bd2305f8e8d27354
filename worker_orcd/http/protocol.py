"""The front's HTTP/1.1 connections: uvicorn's httptools protocol with deadlines and a cap.

uvicorn bounds none of what a client may hold: a connection that sends half a
header and waits is kept for good, and so is one whose client stops reading its
answer. This protocol adds, per connection, one timer at a time and a little
bookkeeping per request (nothing per token):

- a read deadline (WO-LIMIT-3): a request must be sent whole, header and body,
  within `--read-timeout-sec` of its first byte (of the connection's opening,
  for the first); otherwise the connection is answered `408 REQUEST_TIMEOUT`
  (just closed when it sent nothing, or when its answer has begun) and closed.
  Keep-alive between requests is uvicorn's own.
- a connection cap (WO-LIMIT-4): past `--max-connections`, a new connection
  takes the place of the one that has waited longest without sending a whole
  request (connections.ConnectionTable says which); when every connection is
  being answered, it may take one of CANCEL_RESERVE places, which serve only
  POST /cancel and GET /health; past those it is answered `503 WORKER_BUSY`
  with Retry-After and closed.
- a stalled reader (WO-LIMIT-5): an answer with more to write than the
  connection's buffers (kept small) hold, whose client takes less than
  STALL_PROGRESS_BYTES of it in `--stall-timeout-sec`, is cut as if the client
  had gone, so its job is cancelled exactly as by a disconnect.
"""

from __future__ import annotations

import json
from asyncio import TimerHandle, Transport
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from worker_orcd.config import WorkerConfig
from worker_orcd.errors import ErrorCode
from worker_orcd.http.accept import RETRY_AFTER_SEC
from worker_orcd.http.connections import Admission, ConnectionTable, Phase
from worker_orcd.http.correlation import correlation_id_from
from worker_orcd.http.errors import CORRELATION_HEADER, HTTP_STATUS, error_body
from worker_orcd.http.sockets import bound_buffers, connection_cap, kernel_unread, kernel_unsent, reset_on_close
from worker_orcd.log import log_event

CANCEL_RESERVE = 16  # places past the cap, for POST /cancel and GET /health only
RESERVE_SERVES = frozenset({(b"POST", b"/cancel"), (b"GET", b"/health")})
# What a client must take of a stalled answer per --stall-timeout-sec to count as reading.
STALL_PROGRESS_BYTES = 2 * 1024
# A refused connection's answer is followed by our FIN; it is kept this long for the
# request the client may still be sending, so that closing does not reset the answer away.
REFUSED_LINGER_SEC = 1.0

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@dataclass(frozen=True)
class FrontLimits:
    read_timeout_sec: float
    max_connections: int
    stall_timeout_sec: float
    reserve: int = CANCEL_RESERVE


def front_options(config: WorkerConfig) -> dict[str, Any]:
    """uvicorn.Config's arguments for the front's connections."""
    limits = FrontLimits(
        read_timeout_sec=config.read_timeout_sec,
        max_connections=connection_cap(config.max_connections, CANCEL_RESERVE),
        stall_timeout_sec=config.stall_timeout_sec,
    )
    # No WebSocket routes: an Upgrade request is answered as plain HTTP, on this protocol.
    return {"http": protocol_class(limits), "ws": "none"}


def protocol_class(limits: FrontLimits) -> type[FrontProtocol]:
    """A protocol class of its own, with its own table: one per server."""
    table = ConnectionTable(limits.max_connections, limits.reserve)
    return type("FrontProtocol", (FrontProtocol,), {"limits": limits, "table": table})


def error_answer(
    code: ErrorCode, message: str, correlation_id: str, *, retry: bool
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of a plain HTTP error (specs/contract.md) that closes its connection."""
    body = _dumps(error_body(code, message, correlation_id)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (CORRELATION_HEADER.lower().encode(), correlation_id.encode()),
        (b"connection", b"close"),
    ]
    if retry:
        headers.append((b"retry-after", RETRY_AFTER_SEC.encode()))
    return HTTP_STATUS[code], headers, body


def at_cap_message(limits: FrontLimits) -> str:
    return (
        f"the worker holds its {limits.max_connections} connections (--max-connections) and every one "
        "is being answered; retry later"
    )


def refusing_app(limits: FrontLimits):
    """For a reserve place's request other than POST /cancel and GET /health."""

    async def refuse(scope: dict, receive: Any, send: Any) -> None:
        # Its body is taken first: closing on unread bytes would reset the answer away.
        message = await receive()
        while message["type"] == "http.request" and message.get("more_body"):
            message = await receive()
        status, headers, body = error_answer(
            ErrorCode.WORKER_BUSY, at_cap_message(limits), correlation_id_from(scope["headers"]), retry=True
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


class FrontProtocol(HttpToolsProtocol):
    limits: ClassVar[FrontLimits]
    table: ClassVar[ConnectionTable]

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.phase = Phase.SILENT
        self.read_deadline: TimerHandle | None = None
        self.stall: TimerHandle | None = None
        self.stall_unsent = 0  # unsent bytes when the stall timer was armed
        self.reading = False  # a request (a pipelined one too) has begun and is not whole
        self.refused = False
        self.in_reserve = False
        bound_buffers(transport)
        admission = self.table.admit(self)
        if admission is Admission.REFUSED:
            self._refuse()
            return
        self.in_reserve = admission is Admission.RESERVE
        self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_deadline()
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None
        self.table.remove(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # taken and dropped while the answer lingers
        if self.phase is Phase.IDLE:
            self._enter(Phase.HEADER)
            self._arm_read_deadline()
        elif self.phase is Phase.SILENT:
            self._enter(Phase.HEADER)  # its deadline runs from its coming
        super().data_received(data)

    # -- the parser's callbacks: the request's phases ------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading = True

    def on_headers_complete(self) -> None:
        if self.in_reserve and not self._reserve_serves():
            self.app = refusing_app(self.limits)
        super().on_headers_complete()
        if self.in_reserve:
            self.cycle.keep_alive = False  # a reserve place serves one request
        if self.phase is Phase.HEADER:
            self._enter(Phase.BODY)

    def on_message_complete(self) -> None:
        self.reading = False
        if self.phase in (Phase.HEADER, Phase.BODY):
            self._disarm_read_deadline()
            self._enter(Phase.IDLE if self.cycle.response_complete else Phase.BUSY)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        following = self.pipeline[-1][0] if self.pipeline else None  # the cycle started next
        super().on_response_complete()
        if self.transport.is_closing():  # the answer said `Connection: close`
            self._watch_unsent()
            return
        if self.phase is not Phase.BUSY:
            return
        if following is not None:
            if following is self.cycle and self.reading:  # answered while its body is on its way
                self._enter(Phase.BODY)
                self._arm_read_deadline()
        elif self.reading:  # the next request has begun; its header is not whole yet
            self._enter(Phase.HEADER)
            self._arm_read_deadline()
        else:
            self._enter(Phase.IDLE)

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._watch_unsent()

    def send_400_response(self, msg: str) -> None:
        # Section 10's JSON instead of uvicorn's text; nothing is written into an answer
        # under way.
        if self.cycle is None or self.cycle.response_complete:
            self._write_error(ErrorCode.INVALID_REQUEST, "the request is not valid HTTP/1.1", retry=False)
        self._let_go()
        self._close()

    # -- writes the client does not take ----------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm_stall()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None
        if self.transport.is_closing():
            self._watch_unsent()

    def _arm_stall(self) -> None:
        if self.stall is None:
            self.stall_unsent = self._unsent()
            self.stall = self.loop.call_later(self.limits.stall_timeout_sec, self._stalled)

    def _unsent(self) -> int:
        """Bytes the client has not taken: the front's buffer and the kernel's queue (what
        the client's kernel has acknowledged is gone from both, however the two refill)."""
        return self.transport.get_write_buffer_size() + kernel_unsent(self.transport)

    def _stalled(self) -> None:
        self.stall = None
        unsent = self._unsent()
        if self.stall_unsent - unsent >= STALL_PROGRESS_BYTES:  # it reads, if slowly
            self._arm_stall()
            return
        scope = self.cycle.scope if self.cycle is not None else {}
        log_event(
            "stalled_reader",
            correlation_id=scope.get("state", {}).get("correlation_id"),
            method=scope.get("method"),
            path=scope.get("path"),
            unsent_bytes=unsent,
            stall_timeout_sec=self.limits.stall_timeout_sec,
        )
        self._let_go()
        # A reset, not a close: a FIN would wait behind the unsent bytes for good, and the
        # kernel would keep them. The answer hears a disconnect (its job is cancelled).
        reset_on_close(self.transport)
        self.transport.abort()

    # -- ending a connection that has not sent its request ---------------------------------

    def has_unread(self) -> bool:
        return kernel_unread(self.transport) > 0

    def evict(self) -> None:
        """Called by the table: a new connection needs this one's place."""
        self._end_unsent(
            ErrorCode.WORKER_BUSY,
            f"the worker holds its {self.limits.max_connections} connections (--max-connections) and "
            "this one had not sent a whole request; retry",
        )

    def _read_timed_out(self) -> None:
        self.read_deadline = None
        self._end_unsent(
            ErrorCode.REQUEST_TIMEOUT,
            f"the request was not sent whole within {self.limits.read_timeout_sec:g} s (--read-timeout-sec)",
        )

    def _end_unsent(self, code: ErrorCode, message: str) -> None:
        """Close, answering first when the client has asked something and no answer has begun."""
        cycle = self.cycle if self.phase is Phase.BODY else None  # the request being read's own
        if self.phase is Phase.HEADER or (cycle is not None and not cycle.response_started):
            headers = cycle.scope["headers"] if cycle is not None else ()
            self._write_error(code, message, retry=code is ErrorCode.WORKER_BUSY, headers=headers)
        if cycle is not None and not cycle.response_complete:
            # Its route, waiting for the body, hears a disconnect; what it answers is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self._let_go()
        self._close()

    def _refuse(self) -> None:
        self.refused = True
        self._write_error(ErrorCode.WORKER_BUSY, at_cap_message(self.limits), retry=True)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.read_deadline = self.loop.call_later(REFUSED_LINGER_SEC, self.transport.abort)

    def _write_error(self, code: ErrorCode, message: str, *, retry: bool, headers: Any = ()) -> None:
        status, fields, body = error_answer(code, message, correlation_id_from(headers), retry=retry)
        out = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *fields]:
            out += [name, b": ", value, b"\r\n"]
        out += [b"\r\n", body]
        self.transport.write(b"".join(out))

    # -- bookkeeping --------------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self.table.move(self, phase)

    def _arm_read_deadline(self) -> None:
        self._disarm_read_deadline()
        self.read_deadline = self.loop.call_later(self.limits.read_timeout_sec, self._read_timed_out)

    def _disarm_read_deadline(self) -> None:
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    def _close(self) -> None:
        self.transport.close()
        self._watch_unsent()

    def _watch_unsent(self) -> None:
        """A closing connection waits for its unsent bytes to go: for as long as a stalled
        reader may keep them, no longer."""
        if self.transport.get_write_buffer_size():
            self._arm_stall()

    def _let_go(self) -> None:
        self._disarm_read_deadline()
        self.table.remove(self)

    def _reserve_serves(self) -> bool:
        try:
            path = httptools.parse_url(self.url).path
        except httptools.HttpParserInvalidURLError:
            return False
        return (self.parser.get_method(), path) in RESERVE_SERVES
