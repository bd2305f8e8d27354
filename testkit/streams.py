"""Talking to a running worker: streams read on a thread, cancels, job polling, and the
checks every stream must pass (one terminal event, last)."""

from __future__ import annotations

import threading
import uuid
from typing import Any, Callable, Protocol, Sequence

import httpx

from testkit.waiting import wait_until
from testkit.wire import WireEvent, iter_events

CORRELATION_HEADER = "X-Correlation-Id"


class Server(Protocol):
    """What a stream needs of a server: a client on its address (a worker, a Ray Serve app)."""

    def client(self, **kwargs: Any) -> httpx.Client: ...


def uid(prefix: str) -> str:
    """A job id no other test uses, so the shared worker can be reused."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class StreamThread:
    """POST /execute on its own thread and connection, collecting the events as they come
    until the worker closes the stream (testkit.wire.iter_events: the wire, read to its
    end, so whatever follows a terminal event is collected too)."""

    def __init__(
        self,
        worker: Server,
        body: dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        on_event: Callable[["StreamThread", WireEvent], None] | None = None,
    ) -> None:
        self.worker = worker
        self.body = body
        self.job_id = body["job_id"]
        self.headers = headers
        self.on_event = on_event
        self.events: list[WireEvent] = []
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.error: dict[str, Any] | None = None  # the worker's error when it did not answer 200
        self.exception: BaseException | None = None
        self.opened = threading.Event()  # response headers received
        self.done = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "StreamThread":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with (
                self.worker.client() as http,
                http.stream("POST", "/execute", json=self.body, headers=self.headers) as response,
            ):
                self.status = response.status_code
                self.response_headers = response.headers
                if response.status_code != 200:
                    response.read()
                    self.error = response.json()["error"]
                    return
                self.opened.set()
                for event in iter_events(response):
                    with self._cond:
                        self.events.append(event)
                        self._cond.notify_all()
                    if self.on_event is not None:
                        self.on_event(self, event)
        except BaseException as exc:  # reported by join()
            self.exception = exc
        finally:
            self.opened.set()
            with self._cond:
                self.done.set()
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[WireEvent]], bool], timeout: float = 30.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.events) or self.done.is_set(), timeout)
            assert ok and predicate(self.events), (
                f"stream {self.job_id}: condition not met; events so far: {[e.name for e in self.events]}"
            )

    def wait_tokens(self, n: int, timeout: float = 30.0) -> None:
        self.wait_for(lambda evs: sum(e.name == "token" for e in evs) >= n, timeout)

    def join(self, timeout: float = 60.0) -> list[WireEvent]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"stream {self.job_id} did not end within {timeout}s"
        if self.exception is not None:
            raise self.exception
        return self.events


def cancel(client: httpx.Client, job_id: str, **kwargs: Any) -> httpx.Response:
    """POST /cancel, which always answers 202 for a well-formed body. A plain request, not
    the package's client: this checks the answer itself (the client takes any 2xx)."""
    r = client.post("/cancel", json={"job_id": job_id}, **kwargs)
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "cancelling", "job_id": job_id}
    return r


def job_of(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(client: httpx.Client, job_id: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
    return wait_until(lambda: (j := job_of(client, job_id))["state"] == state and j, timeout)


def wait_active(client: httpx.Client, job_id: str, timeout: float = 30.0) -> None:
    """Until the worker is running this job (it may still be evaluating the prompt)."""
    wait_until(lambda: client.get("/health").json()["active_job"] == job_id, timeout)


def wait_idle(client: httpx.Client, timeout: float = 60.0) -> None:
    def idle() -> bool:
        h = client.get("/health").json()
        return h["active_job"] is None and h["queue_depth"] == 0

    wait_until(idle, timeout, interval=0.02)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Section 10: the one JSON error shape, with the correlation id in body and header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) - {"details"} == {"code", "message", "correlation_id"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["correlation_id"] and error["correlation_id"] == response.headers[CORRELATION_HEADER]
    return error


def terminal(events: Sequence[WireEvent]) -> WireEvent:
    """The one terminal event, which must be the last."""
    ends = [e for e in events if e.name in ("end", "error")]
    assert len(ends) == 1, [e.name for e in events]
    assert events[-1] is ends[0], [e.name for e in events]
    return ends[0]


def assert_well_formed(events: Sequence[WireEvent]) -> None:
    """`started`, tokens indexed 0.. without gaps, one terminal event last
    (specs/contract.md, "The event stream")."""
    assert events and events[0].name == "started", [e.name for e in events]
    terminal(events)
    tokens = [e for e in events if e.name == "token"]
    assert [e.data["i"] for e in tokens] == list(range(len(tokens)))
    assert [e.name for e in events[1:-1]] == ["token"] * len(tokens)
    for e in tokens:
        assert isinstance(e.data["t"], str) and e.data["t"]
        assert set(e.data) == {"t", "i"}
