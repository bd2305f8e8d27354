"""The front's own limits, without the model (WO-LIMIT-3..6, WO-ERR-1, WO-ERR-2).

The connection table's choices, and the protocol on a real uvicorn server on
loopback serving a stand-in app whose answers the tests hold open as long as they
need: a request that is never sent whole, a cap reached by connections being
answered, an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

import httpx
import pytest
import uvicorn

from tests.raw_sockets import as_response, connect, read_to_end
from worker_orcd.http.connections import Admission, ConnectionTable, Phase
from worker_orcd.http.errors import RequestError
from worker_orcd.http.openai.errors import OpenAIError
from worker_orcd.http.openai.params import MAX_MESSAGES, parse_chat
from worker_orcd.http.protocol import CANCEL_RESERVE, STALL_PROGRESS_BYTES, FrontLimits, protocol_class
from worker_orcd.http.sockets import kernel_unread
from worker_orcd.http.validation import LIST_LIMIT_MAX, parse_list_query, plain_decimal

# -- the table ---------------------------------------------------------------------------


class Conn:
    def __init__(self, name: str, unread: bool = False) -> None:
        self.name = name
        self.evicted = False
        self.unread = unread

    def evict(self) -> None:
        self.evicted = True

    def has_unread(self) -> bool:
        return self.unread

    def __repr__(self) -> str:
        return self.name


def test_the_longest_half_sent_goes_first_then_silent_then_idle_then_half_bodied():
    table = ConnectionTable(cap=5, reserve=1)
    a, b, c, d, h = (Conn(n) for n in "abcdh")
    for conn in (a, b, c, d, h):
        assert table.admit(conn) is Admission.NORMAL  # each has sent nothing yet
    table.move(a, Phase.BODY)
    table.move(b, Phase.IDLE)
    table.move(c, Phase.BUSY)
    table.move(h, Phase.HEADER)
    # h stopped inside its header: it goes before d, older but silent (as every new one is).
    assert table.admit(e := Conn("e")) is Admission.NORMAL and h.evicted and table.phase_of(h) is None
    assert table.admit(f := Conn("f")) is Admission.NORMAL and d.evicted  # then the silent, oldest first
    table.move(f, Phase.BUSY)
    # e (newest, silent) goes before b (idle) and a (body not whole).
    assert table.admit(g := Conn("g")) is Admission.NORMAL and e.evicted
    table.move(g, Phase.BUSY)
    assert table.admit(i := Conn("i")) is Admission.NORMAL and b.evicted
    table.move(i, Phase.BUSY)
    assert table.admit(j := Conn("j")) is Admission.NORMAL and a.evicted
    table.move(j, Phase.BUSY)
    assert not c.evicted and table.evicted == 5 and len(table) == 5


def test_one_whose_bytes_wait_unread_goes_last():
    """A connection the loop has not read yet (just come, or its next request just sent)
    is passed over for any other candidate, of any phase; alone, it still makes room."""
    table = ConnectionTable(cap=3, reserve=1)
    fresh, idle, body = Conn("fresh", unread=True), Conn("idle", unread=True), Conn("body")
    for conn in (fresh, idle, body):
        assert table.admit(conn) is Admission.NORMAL
    table.move(idle, Phase.IDLE)
    table.move(body, Phase.BODY)
    assert table.admit(d := Conn("d")) is Admission.NORMAL and body.evicted and not fresh.evicted
    table.move(d, Phase.BUSY)
    # Only unread ones left to take: the first in the order goes (the header phase's).
    assert table.admit(Conn("e")) is Admission.NORMAL and fresh.evicted and not idle.evicted


def test_the_kernel_says_what_a_connection_holds_unread():
    """What the table asks of a real connection: the bytes its client sent that wait in the
    worker's kernel (FIONREAD), none once they are read."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        with client, server_side:
            transport = SimpleNamespace(get_extra_info=lambda name: server_side if name == "socket" else None)
            assert kernel_unread(transport) == 0
            sent = request("/health")
            client.sendall(sent)
            wait_until(lambda: kernel_unread(transport) == len(sent))
            assert server_side.recv(1024) == sent
            assert kernel_unread(transport) == 0
    assert kernel_unread(SimpleNamespace(get_extra_info=lambda name: None)) == 0  # no socket: unknown


def test_when_every_connection_is_answered_the_reserve_then_refusal():
    table = ConnectionTable(cap=2, reserve=1)
    busy = [Conn("a"), Conn("b")]
    for conn in busy:
        table.admit(conn)
        table.move(conn, Phase.BUSY)
    r = Conn("r")
    assert table.admit(r) is Admission.RESERVE
    table.move(r, Phase.BUSY)
    assert table.admit(Conn("x")) is Admission.REFUSED and table.refused == 1
    # A reserve place still sending its header makes room for the next one, in the reserve.
    table.move(r, Phase.HEADER)
    s = Conn("s")
    assert table.admit(s) is Admission.RESERVE and r.evicted
    # A main place that frees up is a main place again.
    table.remove(busy[0])
    table.remove(busy[0])  # twice: nothing more
    assert table.admit(Conn("t")) is Admission.NORMAL
    assert not any(c.evicted for c in busy)


def test_a_main_place_is_taken_before_a_reserve_one():
    table = ConnectionTable(cap=1, reserve=1)
    main, reserve = Conn("main"), Conn("reserve")
    table.admit(main)
    table.move(main, Phase.BUSY)
    table.admit(reserve)  # half-sent, in the reserve
    table.move(main, Phase.IDLE)  # now both may go: the main one does
    newcomer = Conn("new")
    assert table.admit(newcomer) is Admission.NORMAL and main.evicted and not reserve.evicted


# -- numbers and the chat's size ----------------------------------------------------------


@pytest.mark.parametrize("text", ["²", "١٢", "５", "+5", " 5", "5.0", "", "0x10", "1e3"])
def test_a_count_is_ascii_digits_only(text):
    """WO-ERR-2: "²".isdigit() is true and int("²") raises; neither is a count."""
    assert plain_decimal(text) is None
    with pytest.raises(RequestError) as caught:
        parse_list_query({"limit": text})
    assert caught.value.details[0]["field"] == "limit"


def test_counts_that_are_counts():
    assert plain_decimal("0050") == 50 and plain_decimal(b"12") == 12
    assert plain_decimal("0" * 5000 + "7") == 7  # past int()'s digit limit, still read
    assert plain_decimal("9" * 40) > LIST_LIMIT_MAX
    assert parse_list_query({"limit": "1000"}) == (None, 1000)


def test_messages_are_bounded():
    """WO-LIMIT-6: past MAX_MESSAGES, OpenAI's 400 for a too long array."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}] * MAX_MESSAGES}
    assert len(parse_chat(body).messages) == MAX_MESSAGES
    body["messages"] = body["messages"] + [{"role": "user", "content": "x"}]
    with pytest.raises(OpenAIError) as caught:
        parse_chat(body)
    error = caught.value.body()["error"]
    assert caught.value.status == 400 and error["code"] == "array_above_max_length"
    assert error["param"] == "messages" and str(MAX_MESSAGES) in error["message"]


# -- the protocol on a real server ---------------------------------------------------------

READ_TIMEOUT = 0.5
STALL_TIMEOUT = 0.5
CAP = 4


class StandIn:
    """An ASGI app: /hold answers once released, /stream writes until the client goes."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.stream_ended = threading.Event()
        self.holding = 0
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/hold" or scope["query_string"] == b"hold":
            with self.lock:
                self.holding += 1
            while not self.release.is_set():
                await asyncio.sleep(0.01)  # the stand-in's own wait, polled
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            gone = asyncio.ensure_future(receive())
            try:
                while not gone.done():
                    await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
                    await asyncio.sleep(0)
            finally:
                self.stream_ended.set()
            return
        answer = json.dumps({"path": path, "body": body.decode()}).encode()
        status = 202 if path == "/cancel" else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})


@contextmanager
def front(app: StandIn, *, cap: int = CAP) -> Iterator[int]:
    limits = FrontLimits(read_timeout_sec=READ_TIMEOUT, max_connections=cap, stall_timeout_sec=STALL_TIMEOUT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(app, http=protocol_class(limits), ws="none", lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        app.release.set()
        server.should_exit = True
        thread.join(10)
        sock.close()


def request(path: str, method: str = "GET", body: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def answer_of(raw: bytes) -> tuple[int, httpx.Headers, dict]:
    response = as_response(raw)
    return response.status_code, response.headers, response.json()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.005)


def test_a_half_sent_header_gets_408_after_the_deadline():
    with front(StandIn()) as port:
        started = time.monotonic()
        s = connect(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half")
        raw = read_to_end(s)
        waited = time.monotonic() - started
    status, headers, body = answer_of(raw)
    assert status == 408 and body["error"]["code"] == "REQUEST_TIMEOUT"
    assert headers["connection"] == "close" and headers["x-correlation-id"] == body["error"]["correlation_id"]
    assert waited >= READ_TIMEOUT * 0.9


def test_a_connection_that_sends_nothing_is_just_closed():
    with front(StandIn()) as port:
        assert read_to_end(connect(port)) == b""


def test_a_half_sent_body_gets_408_and_keeps_its_correlation_id():
    with front(StandIn()) as port:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Correlation-Id: corr-half\r\nContent-Length: 10\r\n\r\n{"
        status, _, body = answer_of(read_to_end(connect(port, head)))
    assert status == 408 and body["error"]["correlation_id"] == "corr-half"


def test_keep_alive_requests_each_get_their_own_deadline():
    with front(StandIn()) as port:
        s = connect(port, request("/health"))
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        # The next request on the same connection starts its own deadline at its first byte.
        s.sendall(b"GET /health HTTP/1.1\r\nHo")
        tail = read_to_end(s)
    assert tail.startswith(b"HTTP/1.1 408")


def test_not_http_is_a_json_400():
    """WO-ERR-1: also what uvicorn's parser refuses."""
    with front(StandIn()) as port:
        status, _, body = answer_of(read_to_end(connect(port, b"NOT HTTP AT ALL\r\n\r\n")))
    assert status == 400 and body["error"]["code"] == "INVALID_REQUEST"


def test_half_sent_connections_make_room_for_a_cancel():
    with front(StandIn()) as port:
        half = [connect(port, b"GET /hold HTTP/1.1\r\nHo") for _ in range(CAP)]
        cancel = connect(port, request("/cancel", "POST", b'{"job_id":"j"}'))
        cancel.settimeout(5)
        assert cancel.recv(65536).startswith(b"HTTP/1.1 202")
        # The oldest half-sent one made room; its client is told why.
        status, headers, body = answer_of(read_to_end(half[0]))
        assert status == 503 and body["error"]["code"] == "WORKER_BUSY" and headers["retry-after"] == "1"


def test_a_half_sent_header_makes_room_before_an_older_connection_that_sent_nothing_yet():
    """A new connection has sent nothing for a moment; one that stopped inside its header
    goes first, and the older, silent one is answered when its request comes."""
    with front(StandIn(), cap=3) as port:
        silent = connect(port)
        half = connect(port, b"GET /health HTTP/1.1\r\nHo")
        idle = connect(port, request("/health"))
        idle.settimeout(5)
        # The answer comes after the half header was read: it was there first.
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        newcomer = connect(port, request("/echo", "POST", b"newcomer"))
        newcomer.settimeout(5)
        assert b"newcomer" in newcomer.recv(65536)
        status, _, body = answer_of(read_to_end(half))
        assert status == 503 and body["error"]["code"] == "WORKER_BUSY"
        silent.sendall(request("/echo", "POST", b"silent"))
        silent.settimeout(5)
        answer = silent.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200") and b"silent" in answer


def test_past_a_cap_of_busy_connections_only_cancel_and_health_get_in():
    app = StandIn()
    with front(app) as port:
        busy = [connect(port, request("/hold")) for _ in range(CAP)]
        wait_until(lambda: app.holding == CAP)
        cancel = read_to_end(connect(port, request("/cancel", "POST", b'{"job_id":"j"}')))
        assert cancel.startswith(b"HTTP/1.1 202") and b"connection: close" in cancel.lower()
        assert read_to_end(connect(port, request("/health"))).startswith(b"HTTP/1.1 200")
        status, headers, body = answer_of(read_to_end(connect(port, request("/jobs", "POST", b"{}"))))
        assert status == 503 and body["error"]["code"] == "WORKER_BUSY" and headers["retry-after"] == "1"
        app.release.set()
        for s in busy:  # never taken for the newcomers
            s.settimeout(5)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_with_the_reserve_answering_too_a_newcomer_is_refused_at_once():
    app = StandIn()
    with front(app, cap=1) as port:
        held = [connect(port, request("/hold"))]
        wait_until(lambda: app.holding == 1)
        # Cancels the stand-in holds: every reserve place is being answered. One at a time, so
        # none is still sending its request (and so free to make room) when the next comes.
        for n in range(2, CANCEL_RESERVE + 2):
            held.append(connect(port, request("/cancel?hold", "POST", b"{}")))
            wait_until(lambda: app.holding == n)
        started = time.monotonic()
        status, headers, body = answer_of(read_to_end(connect(port)))  # before it sends anything
        assert time.monotonic() - started < READ_TIMEOUT  # not left to its read deadline
        assert status == 503 and body["error"]["code"] == "WORKER_BUSY" and headers["retry-after"] == "1"
        assert headers["connection"] == "close"


def test_a_reader_that_takes_nothing_is_cut_and_its_answer_hears_a_disconnect():
    app = StandIn()
    with front(app) as port:
        s = connect(port, request("/stream"), rcvbuf=4096)
        assert app.stream_ended.wait(10), "the stalled stream was never ended"
        # The worker reset the connection: reading what is there ends with the reset.
        s.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass


class StalledTransport:
    """What the stall check reads of a transport: its unsent bytes; and whether it was cut."""

    def __init__(self, unsent: int) -> None:
        self.unsent = unsent
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_extra_info(self, name: str) -> None:
        return None  # no socket: the kernel's queue counts as empty

    def abort(self) -> None:
        self.aborted = True


class Timers:
    def __init__(self) -> None:
        self.due: list = []

    def call_later(self, delay: float, callback):
        self.due.append(callback)
        return SimpleNamespace(cancel=lambda: None)

    def fire(self) -> None:
        self.due.pop(0)()


def test_a_stalled_answer_is_cut_only_when_its_client_took_too_little_in_a_bound():
    """Loopback's window updates come 64 KiB at a time, too coarse to pace a real reader
    in a test: the check itself, on a stand-in transport and clock."""
    cls = protocol_class(FrontLimits(read_timeout_sec=1, max_connections=1, stall_timeout_sec=STALL_TIMEOUT))
    protocol = cls.__new__(cls)
    protocol.transport = StalledTransport(unsent=64 * 1024)
    protocol.loop = timers = Timers()
    protocol.stall = protocol.read_deadline = protocol.cycle = None
    protocol.pause_writing = None
    protocol._arm_stall()
    protocol.transport.unsent -= STALL_PROGRESS_BYTES  # it took enough: another bound
    timers.fire()
    assert not protocol.transport.aborted and len(timers.due) == 1
    protocol.transport.unsent -= STALL_PROGRESS_BYTES - 1  # too little
    timers.fire()
    assert protocol.transport.aborted and not timers.due


def test_a_reader_that_reads_is_never_cut():
    app = StandIn()
    with front(app) as port:
        s = connect(port, request("/stream"))
        s.settimeout(5)
        got = 0
        deadline = time.monotonic() + STALL_TIMEOUT * 4
        while time.monotonic() < deadline:
            got += len(s.recv(65536))
        assert not app.stream_ended.is_set() and got > 1 << 20


# -- the chat template off the event loop (WO-LIMIT-6) ----------------------------------------

# A template that takes a while whatever the messages (the sandbox caps one range at 100,000).
SLOW_TEMPLATE = "{% for i in range(100000) %}{% for j in range(60) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"


def test_a_slow_template_does_not_stall_the_event_loop():
    from tests.unit.test_openai_template import MODEL, StandInWorker, _request
    from worker_orcd.http.openai.routes import _prepare

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = loop.time()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = loop.time()
                gaps.append(now - last)
                last = now

        ticking = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.02)  # the ticker is running
        started = loop.time()
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
        _, _, prompt, _ = await _prepare(_request(body), StandInWorker(SLOW_TEMPLATE), "chat")
        took = loop.time() - started
        done.set()
        await ticking
        assert prompt == "Hi"
        return took, max(gaps)

    took, longest_gap = asyncio.run(run())
    assert took > 0.2, "the template was not slow enough to tell"
    # On the loop, the ticker would wait for the whole render; off it, a GIL switch or two.
    assert longest_gap < took / 3, (took, longest_gap)
