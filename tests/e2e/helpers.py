"""Helpers for the end-to-end tests: streams read on a thread, cancels, job polling."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Sequence, Union

import httpx

from tests.support import CHAT, LONG_PROMPT, SseEvent, WorkerProcess, wait_until
from worker_orcd.client import Client, IncompleteStream, StreamEvent, WorkerError

SHORT_PROMPT = CHAT.format("What is the capital of France?")
# Answered greedily with "The capital of France is Paris." and EOS.
SHORT_ANSWER = "The capital of France is Paris."
CORRELATION_HEADER = "X-Correlation-Id"
AnyEvent = Union[SseEvent, StreamEvent]  # both have name, data and at


def uid(prefix: str) -> str:
    """A job id no other test uses, so the shared worker can be reused."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def long_prompt_job(job_id: str, **extra: Any) -> dict[str, Any]:
    """A job whose prompt takes seconds to evaluate: tests cancel it long before it ends."""
    return {"job_id": job_id, "prompt": LONG_PROMPT, "max_tokens": 64, "temperature": 0, **extra}


class StreamThread:
    """POST /execute on its own thread and connection, through worker_orcd.client, collecting
    the typed events as they come (each has `name`, `data` and `at`, as a raw SSE event)."""

    def __init__(
        self,
        worker: WorkerProcess,
        body: dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        on_event: Callable[["StreamThread", StreamEvent], None] | None = None,
    ) -> None:
        self.worker = worker
        self.body = body
        self.job_id = body.get("job_id")
        self.headers = headers
        self.on_event = on_event
        self.events: list[StreamEvent] = []
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.error: WorkerError | None = None  # the worker's answer when it was not 200
        self.exception: BaseException | None = None
        self.opened = threading.Event()  # response headers received
        self.done = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "StreamThread":
        self._thread.start()
        return self

    def _run(self) -> None:
        body = dict(self.body)
        prompt = body.pop("prompt")
        try:
            with self.worker.client() as http:
                api = Client(http_client=http)
                # The tests send their cancels themselves; a stream that breaks off only hangs up.
                stream = api.stream(prompt, headers=self.headers, cancel_on_exit=False, **body)
                self.job_id = stream.job_id
                try:
                    stream.open()
                except WorkerError as exc:
                    self.status, self.error = exc.status, exc
                    return
                with stream:
                    self.status = stream.response.status_code
                    self.response_headers = stream.response.headers
                    self.opened.set()
                    for event in stream:
                        with self._cond:
                            self.events.append(event)
                            self._cond.notify_all()
                        if self.on_event is not None:
                            self.on_event(self, event)
        except IncompleteStream:
            pass  # a stream cut without its terminal event: the tests look at `events`
        except BaseException as exc:  # reported by join()
            self.exception = exc
        finally:
            self.opened.set()
            with self._cond:
                self.done.set()
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[StreamEvent]], bool], timeout: float = 30.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.events) or self.done.is_set(), timeout)
            assert ok and predicate(self.events), (
                f"stream {self.job_id}: condition not met; events so far: {[e.name for e in self.events]}"
            )

    def wait_tokens(self, n: int, timeout: float = 30.0) -> None:
        self.wait_for(lambda evs: sum(e.name == "token" for e in evs) >= n, timeout)

    def join(self, timeout: float = 60.0) -> list[StreamEvent]:
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


def terminal(events: Sequence[AnyEvent]) -> AnyEvent:
    """The one terminal event, which must be the last."""
    ends = [e for e in events if e.name in ("end", "error")]
    assert len(ends) == 1, [e.name for e in events]
    assert events[-1] is ends[0], [e.name for e in events]
    return ends[0]


def assert_well_formed(events: Sequence[AnyEvent]) -> None:
    """`started`, tokens indexed 0.. without gaps, one terminal event last (section 3)."""
    assert events and events[0].name == "started", [e.name for e in events]
    terminal(events)
    tokens = [e for e in events if e.name == "token"]
    assert [e.data["i"] for e in tokens] == list(range(len(tokens)))
    assert [e.name for e in events[1:-1]] == ["token"] * len(tokens)
    for e in tokens:
        assert isinstance(e.data["t"], str) and e.data["t"]
        assert set(e.data) == {"t", "i"}


def elapsed_since(t0: float) -> float:
    return time.perf_counter() - t0
