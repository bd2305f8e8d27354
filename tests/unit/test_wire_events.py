"""The end-to-end tests' stream reader (testkit.wire.read_events) against a fake server:
it reads the wire to the end of the connection, so a second terminal event, or anything
after the first, fails the assertions that claim "exactly one terminal event, last"."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import pytest

from testkit.streams import StreamThread, assert_well_formed, terminal
from testkit.wire import execute, read_events

STARTED = 'event: started\ndata: {"job_id": "j"}\n\n'
TOKEN = 'event: token\ndata: {"t": "Hi", "i": 0}\n\n'
END = 'event: end\ndata: {"tokens_out": 1, "decode_time_ms": 1.0, "stop_reason": "eos"}\n\n'
CANCELLED = 'event: error\ndata: {"code": "CANCELLED", "message": "m", "retriable": false}\n\n'
LATE_TOKEN = 'event: token\ndata: {"t": "!", "i": 1}\n\n'


class FakeWorker:
    """Answers every POST with one SSE body, sent in small pieces, then closes the connection."""

    def __init__(self, body: str) -> None:
        payload = body.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i in range(0, len(payload), 7):  # events split across reads
                    self.wfile.write(payload[i : i + 7])
                    self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture
def serve() -> Iterator:
    servers: list[FakeWorker] = []

    def start(body: str) -> FakeWorker:
        servers.append(FakeWorker(body))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def events_both_ways(fake: FakeWorker) -> list[list]:
    """The events as `execute` and as a StreamThread read them."""
    with fake.client() as c:
        direct = execute(c, {"job_id": "j"})
    threaded = StreamThread(fake, {"job_id": "j"}).start().join(timeout=10)
    return [direct, threaded]


def test_a_well_formed_stream_passes(serve):
    fake = serve(": ping\n\n" + STARTED + TOKEN + END)
    for events in events_both_ways(fake):
        assert [e.name for e in events] == ["started", "token", "end"]
        assert_well_formed(events)
        assert terminal(events).data["stop_reason"] == "eos"


def test_crlf_line_ends_are_read_too(serve):
    fake = serve((STARTED + TOKEN + END).replace("\n", "\r\n"))
    with fake.client() as c:
        assert [e.name for e in execute(c, {"job_id": "j"})] == ["started", "token", "end"]


@pytest.mark.parametrize(
    "body",
    [
        STARTED + TOKEN + END + CANCELLED,  # two terminal events
        STARTED + TOKEN + CANCELLED + CANCELLED,  # the same one twice
        STARTED + TOKEN + END + LATE_TOKEN,  # something after the terminal event
    ],
    ids=["end-then-error", "error-twice", "token-after-end"],
)
def test_what_follows_a_terminal_event_fails_the_check(serve, body):
    fake = serve(body)
    for events in events_both_ways(fake):
        assert len(events) == 4  # read past the first terminal event, to the connection's end
        with pytest.raises(AssertionError):
            terminal(events)
        with pytest.raises(AssertionError):
            assert_well_formed(events)


def test_a_stream_cut_before_its_terminal_event_has_none(serve):
    fake = serve(STARTED + TOKEN + 'event: end\ndata: {"tokens_out"')  # the last event unfinished
    with fake.client() as c, c.stream("POST", "/execute", json={}) as r:
        events = read_events(r)
    assert [e.name for e in events] == ["started", "token"]
    with pytest.raises(AssertionError):
        terminal(events)
