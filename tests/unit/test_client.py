"""worker_orcd.client against httpx.MockTransport: error mapping, retries, tokens, bodies,
typed events, what leaving a stream early sends (specs/contract.md, "Clients")."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import sys

import httpx
import pytest

from worker_orcd.api.events import encode_event
from worker_orcd.client import (
    AsyncClient,
    Client,
    End,
    Error,
    Forbidden,
    IncompleteStream,
    InvalidRequest,
    JobExists,
    NotFound,
    OtherEvent,
    QueueFull,
    Started,
    Token,
    Unauthorized,
    Unavailable,
    WorkerError,
)
from worker_orcd.client.events import from_sse
from worker_orcd.client.sse import SseEvent, aiter_events, iter_events
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events as job_events

URL = "http://worker.test"


def sse(*events: job_events.Event) -> bytes:
    return b"".join(encode_event(e) for e in events)


STREAM = sse(
    job_events.started("j1", "m.gguf", "2026-11-25T12:00:00.000Z", 7, 5, "c1"),
    job_events.token("Hel", 0),
    job_events.token("lo", 1),
    job_events.end(2, 12.5, "max_tokens"),
)
CANCELLED = job_events.error(
    ErrorCode.CANCELLED, "Job cancelled by client request", False, tokens_out=1, stop_ms=1.5, cancel_ms=3.0
)


class Worker:
    """A scripted worker: records requests, answers from `routes` (path -> handler)."""

    def __init__(self, **routes) -> None:
        self.requests: list[httpx.Request] = []
        self.routes = routes

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.routes.get(request.url.path.strip("/").split("/")[0] or "root")
        if handler is None:
            return httpx.Response(404, json={"error": {"code": "NOT_FOUND", "message": "no route"}})
        return handler(request)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]

    def bodies(self, path: str) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path]


def client_for(worker: Worker, **kwargs) -> Client:
    return Client(URL, http_client=httpx.Client(transport=httpx.MockTransport(worker)), **kwargs)


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that arrives in pieces, as a real stream does (bytes given whole are read at once)."""

    def __init__(self, data: bytes, size: int = 7) -> None:
        self.parts = [data[i : i + size] for i in range(0, len(data), size)]

    def __iter__(self):
        yield from self.parts

    async def __aiter__(self):
        for part in self.parts:
            yield part


def streaming(body: bytes, status: int = 200):
    return lambda request: httpx.Response(status, headers={"content-type": "text/event-stream"}, stream=Chunks(body))


def accepted(request: httpx.Request) -> httpx.Response:
    return httpx.Response(202, json={"status": "cancelling", "job_id": json.loads(request.content)["job_id"]})


def error_answer(status: int, code: str, **headers: str):
    body = {"error": {"code": code, "message": f"{code} says no", "correlation_id": "corr-1"}}
    return lambda request: httpx.Response(status, json=body, headers=headers)


# -- WO-CLIENT-3: HTTP errors become exceptions with the worker's code -------------------------


@pytest.mark.parametrize(
    "status, code, cls, retriable",
    [
        (400, "INVALID_REQUEST", InvalidRequest, False),
        (401, "UNAUTHORIZED", Unauthorized, False),
        (403, "FORBIDDEN", Forbidden, False),
        (403, "ORIGIN_NOT_ALLOWED", Forbidden, False),
        (404, "JOB_NOT_FOUND", NotFound, False),
        (409, "JOB_EXISTS", JobExists, False),
        (429, "TENANT_BUSY", QueueFull, True),
        (503, "WORKER_BUSY", QueueFull, True),
        (503, "WORKER_SHUTTING_DOWN", Unavailable, True),
        (503, "ENGINE_UNAVAILABLE", Unavailable, True),
        (500, "INTERNAL", WorkerError, False),
    ],
)
def test_http_errors_carry_the_workers_code(status, code, cls, retriable):
    worker = Worker(execute=error_answer(status, code, **{"Retry-After": "2"}), jobs=error_answer(status, code))
    client = client_for(worker)
    with pytest.raises(cls) as raised:
        with client.stream("hi", job_id="j1"):
            pass
    exc = raised.value
    assert (exc.code, exc.status, exc.retriable, exc.retry_after) == (code, status, retriable, 2.0)
    assert exc.message == f"{code} says no" and exc.correlation_id == "corr-1"
    assert code in str(exc) and str(status) in str(exc)
    with pytest.raises(cls):
        client.job("j1")
    # The execute was refused: nothing to cancel, and no cancel was sent.
    assert "/cancel" not in worker.paths()


def test_an_answer_without_the_workers_body_is_named_after_its_status():
    worker = Worker(health=lambda r: httpx.Response(502, text="bad gateway"))
    with pytest.raises(WorkerError) as raised:
        client_for(worker).health()
    assert (raised.value.code, raised.value.status, raised.value.retriable) == ("HTTP_502", 502, True)
    assert "bad gateway" in raised.value.message


def test_error_details_are_kept():
    details = [{"field": "max_tokens", "reason": "must be at most 2048"}]
    body = {"error": {"code": "INVALID_REQUEST", "message": "max_tokens: no", "details": details}}
    worker = Worker(execute=lambda r: httpx.Response(400, json=body, headers={"X-Correlation-Id": "h1"}))
    with pytest.raises(InvalidRequest) as raised:
        client_for(worker).stream("hi", max_tokens=5000).open()
    assert raised.value.details == details and raised.value.correlation_id == "h1"


# -- WO-CLIENT-4: cancel is retried on connection errors only ------------------------------------


def test_cancel_is_sent_again_after_connection_errors():
    failures = iter([httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])

    def cancel(request):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return accepted(request)

    worker = Worker(cancel=cancel)
    assert client_for(worker).cancel("j1") == {"status": "cancelling", "job_id": "j1"}
    assert worker.paths() == ["/cancel"] * 3


def test_cancel_gives_up_after_its_retries():
    def refuse(request):
        raise httpx.ConnectError("refused")

    worker = Worker(cancel=refuse)
    with pytest.raises(httpx.ConnectError):
        client_for(worker, cancel_retries=1).cancel("j1")
    assert worker.paths() == ["/cancel"] * 2


@pytest.mark.parametrize("status, code", [(500, "INTERNAL"), (400, "INVALID_REQUEST"), (503, "WORKER_BUSY")])
def test_cancel_is_never_sent_again_after_an_http_error(status, code):
    worker = Worker(cancel=error_answer(status, code))
    with pytest.raises(WorkerError) as raised:
        client_for(worker).cancel("j1")
    assert raised.value.code == code
    assert worker.paths() == ["/cancel"]


# -- WO-CLIENT-5: the token -----------------------------------------------------------------------


def test_token_from_the_argument_or_the_environment(monkeypatch):
    worker = Worker(health=lambda r: httpx.Response(200, json={"status": "healthy"}))
    monkeypatch.setenv("WORKER_ORCD_API_TOKEN", "from-env")
    client_for(worker).health()
    client_for(worker, api_token="given").health()
    monkeypatch.delenv("WORKER_ORCD_API_TOKEN")
    client_for(worker).health()
    auth = [r.headers.get("authorization") for r in worker.requests]
    assert auth == ["Bearer from-env", "Bearer given", None]


def test_a_callers_pooled_client_keeps_its_own_token_and_base_url(monkeypatch):
    monkeypatch.setenv("WORKER_ORCD_API_TOKEN", "from-env")
    worker = Worker(health=lambda r: httpx.Response(200, json={"status": "healthy"}))
    pooled = httpx.Client(
        base_url=URL, headers={"Authorization": "Bearer pooled"}, transport=httpx.MockTransport(worker)
    )
    client = Client(http_client=pooled)
    client.health()
    client.close()
    assert not pooled.is_closed  # the caller's to close
    assert worker.requests[0].headers["authorization"] == "Bearer pooled"
    assert str(worker.requests[0].url) == f"{URL}/health"


# -- WO-CLIENT-1: the request, and typed events ----------------------------------------------------


def test_stream_body_and_typed_events():
    worker = Worker(execute=streaming(STREAM))
    client = client_for(worker)
    with client.stream(
        "Hi", job_id="j1", max_tokens=2, temperature=0, stop="\n", correlation_id="c1", top_k=40
    ) as stream:
        events = list(stream)
    (body,) = worker.bodies("/execute")
    assert body == {"job_id": "j1", "prompt": "Hi", "max_tokens": 2, "temperature": 0, "stop": ["\n"], "top_k": 40}
    assert worker.requests[0].headers["x-correlation-id"] == "c1"
    started, first, second, end = events
    assert started == Started("j1", "m.gguf", "2026-11-25T12:00:00.000Z", 7, 5, "c1")
    assert (first, second) == (Token("Hel", 0), Token("lo", 1))
    assert end == End("max_tokens", 2, 12.5)
    assert [e.name for e in events] == ["started", "token", "token", "end"]
    assert second.data == {"t": "lo", "i": 1} and second.at >= first.at > 0
    assert stream.started == started and stream.terminal == end
    assert "/cancel" not in worker.paths()  # it ended: nothing to cancel


def test_a_job_id_is_made_when_none_is_given():
    worker = Worker(execute=streaming(STREAM))
    client = client_for(worker)
    with client.stream("Hi") as a, client.stream("Hi") as b:
        assert a.job_id != b.job_id
    assert [body["job_id"] for body in worker.bodies("/execute")] == [a.job_id, b.job_id]
    assert all(len(i) <= 128 and i.replace("-", "").isalnum() for i in (a.job_id, b.job_id))


def test_error_event_fields():
    event = from_sse(SseEvent("error", json.dumps(CANCELLED.data | {"forced": True}), 1.0))
    assert event == Error("CANCELLED", "Job cancelled by client request", False, 1, 1.5, 3.0, True)
    assert event.cancelled and event.terminal and event.at == 1.0
    plain = from_sse(SseEvent("error", '{"code":"INTERNAL","message":"m","retriable":false}', 0.0))
    assert (plain.tokens_out, plain.stop_ms, plain.forced, plain.cancelled) == (None, None, False, False)


def test_unknown_events_are_passed_on():
    event = from_sse(SseEvent("progress", '{"done":3}', 2.0))
    assert event == OtherEvent("progress", {"done": 3}) and not event.terminal


def test_text_reads_the_rest():
    worker = Worker(execute=streaming(STREAM))
    with client_for(worker).stream("Hi", job_id="j1") as stream:
        assert stream.text() == "Hello"
        assert stream.terminal == End("max_tokens", 2, 12.5)


def test_raw_events_and_typed_events_continue_each_other():
    worker = Worker(execute=streaming(STREAM))
    with client_for(worker).stream("Hi", job_id="j1") as stream:
        raw = stream.sse_events()
        assert [next(raw).name, next(raw).name] == ["started", "token"]
        assert list(stream) == [Token("lo", 1), End("max_tokens", 2, 12.5)]
        assert stream.started.job_id == "j1"


def test_a_stream_cut_before_its_terminal_event_raises():
    worker = Worker(execute=streaming(STREAM.split(b"event: end")[0]), cancel=accepted)
    with pytest.raises(IncompleteStream) as raised:
        with client_for(worker).stream("Hi", job_id="j1") as stream:
            for _ in stream:
                pass
    assert raised.value.job_id == "j1" and raised.value.code == "STREAM_INCOMPLETE"


# -- WO-CLIENT-2: leaving early cancels -------------------------------------------------------------


def test_leaving_the_block_early_sends_the_cancel():
    worker = Worker(execute=streaming(STREAM), cancel=accepted)
    with client_for(worker).stream("Hi", job_id="j1") as stream:
        for event in stream:
            if isinstance(event, Token):
                break
    assert worker.bodies("/cancel") == [{"job_id": "j1"}]


def test_an_exception_in_the_block_sends_the_cancel_and_is_raised():
    worker = Worker(execute=streaming(STREAM), cancel=accepted)
    with pytest.raises(KeyboardInterrupt):
        with client_for(worker).stream("Hi", job_id="j1") as stream:
            next(iter(stream))
            raise KeyboardInterrupt
    assert worker.bodies("/cancel") == [{"job_id": "j1"}]


def test_a_failed_cancel_on_the_way_out_is_not_raised():
    def refuse(request):
        raise httpx.ConnectError("refused")

    worker = Worker(execute=streaming(STREAM), cancel=refuse)
    with client_for(worker, cancel_retries=0).stream("Hi", job_id="j1"):
        pass
    assert worker.paths() == ["/execute", "/cancel"]


def test_no_cancel_when_told_so():
    worker = Worker(execute=streaming(STREAM), cancel=accepted)
    with client_for(worker).stream("Hi", job_id="j1", cancel_on_exit=False):
        pass
    assert worker.paths() == ["/execute"]


def test_job_jobs_health():
    jobs = {"jobs": [{"job_id": "a"}, {"job_id": "b"}]}
    worker = Worker(
        jobs=lambda r: httpx.Response(200, json={"job_id": "a:1", "state": "completed"})
        if r.url.path != "/jobs"
        else httpx.Response(200, json=jobs),
        health=lambda r: httpx.Response(200, json={"status": "healthy", "ready": True}),
    )
    client = client_for(worker)
    assert client.job("a:1")["state"] == "completed"
    assert client.jobs(state="completed", limit=2, ignored=None) == jobs["jobs"]
    assert client.health()["ready"] is True
    assert worker.requests[1].url.params == httpx.QueryParams({"state": "completed", "limit": "2"})


# -- async -------------------------------------------------------------------------------------------


def async_client_for(worker: Worker, **kwargs) -> AsyncClient:
    return AsyncClient(URL, http_client=httpx.AsyncClient(transport=httpx.MockTransport(worker)), **kwargs)


def test_async_stream_and_errors():
    async def main():
        worker = Worker(execute=streaming(STREAM), cancel=accepted, health=error_answer(503, "WORKER_BUSY"))
        client = async_client_for(worker)
        async with client.stream("Hi", job_id="j1", max_tokens=2) as stream:
            events = [e async for e in stream]
        assert events[1:] == [Token("Hel", 0), Token("lo", 1), End("max_tokens", 2, 12.5)]
        with pytest.raises(QueueFull):
            await client.health()
        assert await client.cancel("j1") == {"status": "cancelling", "job_id": "j1"}
        return worker.paths()

    assert asyncio.run(main()) == ["/execute", "/health", "/cancel"]


def test_async_leaving_early_sends_the_cancel():
    async def main():
        worker = Worker(execute=streaming(STREAM), cancel=accepted)
        async with async_client_for(worker).stream("Hi", job_id="j1") as stream:
            async for event in stream:
                if isinstance(event, Token):
                    break
        return worker.bodies("/cancel")

    assert asyncio.run(main()) == [{"job_id": "j1"}]


def test_async_reader_matches_the_sync_one():
    async def chunks(data: bytes, size: int):
        for i in range(0, len(data), size):
            yield data[i : i + size]

    async def read(data: bytes, size: int):
        return [(e.name, e.raw) for e in [e async for e in aiter_events(chunks(data, size))]]

    for data in (STREAM, STREAM.replace(b"\n", b"\r\n"), b": ping\n\ndata: 1\n\ndata: 2"):
        want = [(e.name, e.raw) for e in iter_events([data])]
        for size in (1, 3, 7, len(data)):
            assert asyncio.run(read(data, size)) == want


# -- WO-CLIENT-6: without httpx ----------------------------------------------------------------------


def test_without_httpx_the_clients_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "httpx", None)  # makes `import httpx` fail
    package = importlib.import_module("worker_orcd.client")
    monkeypatch.delitem(sys.modules, "worker_orcd.client._client")
    monkeypatch.delattr(package, "_client")
    with pytest.raises(ImportError, match=r'pip install "worker-orcd\[client\]"'):
        package.Client
    with pytest.raises(ImportError, match=r'pip install "worker-orcd\[client\]"'):
        exec("from worker_orcd.client import AsyncClient", {})
    # The events, errors and SSE reader need no httpx.
    assert package.Token("a", 0).text == "a" and package.WorkerError("X", "m").code == "X"


# -- WO-CLIENT-10: chat through the OpenAI route --------------------------------------------------


def chunk(choices, **rest) -> str:
    return "data: " + json.dumps({"id": "j1", "object": "chat.completion.chunk", "model": "m", "choices": choices, **rest})


def delta(content=None, role=None, finish=None) -> dict:
    d = {} if content is None and role is None else {"content": content or "", **({"role": role} if role else {})}
    return {"index": 0, "delta": d, "finish_reason": finish}


def chat_body(*lines: str) -> bytes:
    return "".join(line + "\n\n" for line in lines).encode()


CHAT_STREAM = chat_body(
    chunk([delta("", role="assistant")]),
    chunk([delta("Hel")]),
    chunk([delta("lo")]),
    chunk([delta(finish="length")]),
    chunk([], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
    "data: [DONE]",
)


def test_chat_reads_like_a_stream():
    worker = Worker(
        v1=lambda r: httpx.Response(200, json={"data": [{"id": "m"}]})
        if r.url.path == "/v1/models"
        else streaming(CHAT_STREAM)(r)
    )
    client = client_for(worker)
    with client.chat("Hi", job_id="j1", max_tokens=2, seed=3) as stream:
        events = list(stream)
    assert events == [
        Started("j1", "m", None, None, None, None),
        Token("Hel", 0),
        Token("lo", 1),
        End("max_tokens", 2, None),
    ]
    request = worker.requests[-1]
    assert request.headers["x-request-id"] == "j1"
    assert json.loads(request.content) == {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 2,
        "seed": 3,
    }
    with client.chat("Hi", job_id="j2"):
        pass
    assert worker.paths().count("/v1/models") == 1  # asked once


def test_chat_end_and_error_chunks():
    error = {"message": "cancelled", "type": "cancelled", "param": None, "code": "CANCELLED"}
    error |= {"retriable": False, "tokens_out": 1, "stop_ms": 2.0, "cancel_ms": 4.0}
    cases = [
        # No usage chunk: tokens_out counts the tokens; "stop" without stop strings is EOS.
        (chat_body(chunk([delta("a")]), chunk([delta(finish="stop")]), "data: [DONE]"), {}, End("eos", 1, None)),
        (chat_body(chunk([delta("a")]), chunk([delta(finish="stop")]), "data: [DONE]"), {"stop": "x"}, End("stop", 1, None)),
        (chat_body(chunk([delta("a")]), "data: " + json.dumps({"error": error})), {}, Error("CANCELLED", "cancelled", False, 1, 2.0, 4.0)),
    ]
    for body, options, want in cases:
        worker = Worker(v1=streaming(body))
        with client_for(worker).chat("Hi", model="m", **options) as stream:
            assert list(stream)[-1] == want


def test_async_chat():
    async def main():
        worker = Worker(v1=lambda r: httpx.Response(200, json={"data": [{"id": "m"}]})
                        if r.url.path == "/v1/models" else streaming(CHAT_STREAM)(r))
        async with async_client_for(worker).chat("Hi", job_id="j1") as stream:
            return await stream.text(), stream.terminal

    assert asyncio.run(main()) == ("Hello", End("max_tokens", 2, None))


def test_a_stream_opened_before_its_block_is_sent_once():
    worker = Worker(execute=streaming(STREAM))
    stream = client_for(worker).stream("Hi", job_id="j1").open()
    with stream:
        assert stream.text() == "Hello"
    assert worker.paths() == ["/execute"]


def test_an_answer_that_is_not_json_is_a_worker_error():
    worker = Worker(health=lambda r: httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(WorkerError) as raised:
        client_for(worker).health()
    assert raised.value.code == "HTTP_200" and "proxy" in raised.value.message


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_status_line_shows_a_queued_jobs_place():
    """WO-CLIENT-7: `worker-orcd run`'s status line while queued names the jobs ahead
    (from `queue_position`, WO-JOBS-5), then the tokens once it runs."""
    from worker_orcd.client.terminal import StatusLine

    err = _Tty()
    line = StatusLine(err, stdout=io.StringIO(), enabled=True)
    line.queued(2)
    assert err.getvalue().endswith("[queued] 2 job(s) ahead in the queue")
    line.queued(0)
    assert err.getvalue().endswith("[queued] next in the queue")
    line.started()
    assert err.getvalue().endswith("[running]")
