"""Client and AsyncClient: the worker's HTTP API over httpx (specs/contract.md, "Clients").

A stream always knows its job's id (one is made when none is given), so leaving
it early, a KeyboardInterrupt in it or its asyncio task being cancelled can send
`POST /cancel` for that job before the connection is closed.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar, Unpack
from urllib.parse import quote

try:
    import httpx
except ImportError as exc:  # the package itself does not need httpx; its client does
    raise ImportError('worker_orcd.client needs httpx: pip install "worker-orcd[client]"', name=exc.name) from exc

from worker_orcd.api.events import (
    TERMINAL_NAMES,
    SseEvent,
    aiter_events,
    is_done,
    is_terminal,
    iter_events,
    openai_error_of,
)
from worker_orcd.client.errors import IncompleteStream, WorkerError, error_from_response
from worker_orcd.client.events import End, Error, Started, StreamEvent, Token, from_sse
from worker_orcd.errors import ErrorCode

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "WORKER_ORCD_API_TOKEN"
# A quiet stream still gets a keep-alive comment every 15 s (WO-SSE-3): a minute of
# silence means the connection is gone. Connecting takes far less.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
CANCEL_RETRIES = 3
# Connection errors a cancel is sent again after; never an HTTP error (the worker answered).
_RETRY_ON = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_BACKGROUND: set[asyncio.Task] = set()  # cancels sent while their task is being cancelled
_END = object()  # an async stream's body has ended


def new_job_id() -> str:
    return f"py-{uuid.uuid4().hex}"


class JobOptions(TypedDict, total=False):
    """The options stream() and chat() name; any other keyword is sent in the body as given."""

    job_id: str | None  # made when not given, so that a stream can always cancel its job
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: str | Sequence[str] | None
    correlation_id: str | None
    headers: Mapping[str, str] | None
    cancel_on_exit: bool


_SAMPLING = ("max_tokens", "temperature", "top_p", "seed", "stop")


def _split(options: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], Mapping[str, str] | None, bool]:
    """A stream's options: its job id, the named body fields (None: not sent), the others
    as given, its extra headers and whether leaving it early cancels the job."""
    named = {k: options.get(k) for k in _SAMPLING}
    named["stop"] = _stop_list(named["stop"])
    params = {k: v for k, v in options.items() if k not in JobOptions.__annotations__}
    job_id = options.get("job_id") or new_job_id()
    return job_id, named, params, options.get("headers"), options.get("cancel_on_exit", True)


def _stop_list(stop: str | Sequence[str] | None) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


H = TypeVar("H", httpx.Client, httpx.AsyncClient)
S = TypeVar("S", "Stream", "AsyncStream")
C = TypeVar("C", "Client", "AsyncClient")


class _Base(Generic[H, S]):
    """What both clients share: addresses, the token, request bodies, retry pacing, and
    the making of a job's stream (opened by the caller, as its client is sync or async)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_token: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        http_client: H | None = None,
        headers: Mapping[str, str] | None = None,
        cancel_retries: int = CANCEL_RETRIES,
    ) -> None:
        # With a caller's client and no url, paths are relative to the client's base_url.
        self.url = (url or ("" if http_client is not None else DEFAULT_URL)).rstrip("/")
        self.cancel_retries = cancel_retries
        self._headers = dict(headers or {})
        token = api_token if api_token is not None else os.environ.get(TOKEN_ENV) or None
        # The env var does not override a token the caller's own client already sends.
        if token and (api_token is not None or http_client is None or "authorization" not in http_client.headers):
            self._headers["Authorization"] = f"Bearer {token}"
        self._owned = http_client is None
        self._model: str | None = None
        self.http: H = http_client if http_client is not None else self._new_http(timeout)

    def _new_http(self, timeout: float | httpx.Timeout | None) -> H:
        raise NotImplementedError

    def _new_stream(self, chat: bool, job_id: str, body: dict[str, Any], headers: dict[str, str], cancel: bool) -> S:
        raise NotImplementedError

    def stream(self, prompt: str, **options: Unpack[JobOptions]) -> S:
        """POST /execute, as a context manager: `with client.stream(...) as events:` (an
        AsyncClient's: `async with client.stream(...) as events: async for e in events:`).

        Options (JobOptions) left None are not sent (the worker's defaults apply); other
        keywords (top_k, repetition_penalty, ...) are sent as given. Entering sends the
        request and raises WorkerError for an HTTP error; iterating yields Started,
        Token..., then End or Error. Leaving the block before the terminal event (break, an
        exception, Ctrl-C, the task being cancelled) sends POST /cancel for the job, unless
        `cancel_on_exit` is False (then closing the connection is all: the worker cancels
        the job as a disconnect).
        """
        job_id, named, params, headers, cancel_on_exit = _split(options)
        body = self._body(prompt, job_id, named, params)
        sent_headers = self._stream_headers(options.get("correlation_id"), headers)
        return self._new_stream(False, job_id, body, sent_headers, cancel_on_exit)

    def chat(
        self, messages: str | Sequence[Mapping[str, Any]], *, model: str | None = None, **options: Unpack[JobOptions]
    ) -> S:
        """Like stream(), with the model's own chat template applied by the worker: through
        its OpenAI route, POST /v1/chat/completions (`messages`: a user's text, or OpenAI
        messages). The events are the same typed ones (Started carries only job_id and
        model; with stop strings, End's stop_reason "stop" also covers EOS: OpenAI's
        finish_reason does not tell them apart). `model` defaults to the worker's."""
        job_id, named, params, headers, cancel_on_exit = _split(options)
        correlation_id = options.get("correlation_id")
        body, sent_headers = self._chat_request(messages, job_id, model, named, params, correlation_id, headers)
        return self._new_stream(True, job_id, body, sent_headers, cancel_on_exit)

    def _url(self, path: str) -> str:
        return self.url + path

    def _job_path(self, job_id: str) -> str:
        return "/jobs/" + quote(job_id, safe="")

    def _body(
        self,
        prompt: str,
        job_id: str,
        named: dict[str, Any],
        params: dict[str, Any],
    ) -> dict[str, Any]:
        body = {"job_id": job_id, "prompt": prompt}
        body.update((k, v) for k, v in named.items() if v is not None)
        body.update(params)  # as given: a caller may mean to send anything
        return body

    def _stream_headers(self, correlation_id: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
        merged = {**self._headers, **(headers or {})}
        if correlation_id is not None:
            merged["X-Correlation-Id"] = correlation_id
        return merged

    def _chat_request(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        job_id: str,
        model: str | None,
        named: dict[str, Any],
        params: dict[str, Any],
        correlation_id: str | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
        # The usage chunk tells tokens_out, which the chunks before it do not.
        body["stream_options"] = {"include_usage": True}
        body.update((k, v) for k, v in named.items() if v is not None)
        body.update(params)
        # X-Request-Id is the job's id on the OpenAI routes: cancels and GET /jobs take it.
        return body, {**self._stream_headers(correlation_id, headers), "X-Request-Id": job_id}

    @staticmethod
    def _model_of(models: dict[str, Any]) -> str:
        data = models.get("data") or []
        if not data:
            raise WorkerError("NO_MODEL", "GET /v1/models lists no model")
        return data[0]["id"]

    @staticmethod
    def _pause(attempt: int) -> float:
        return min(1.0, 0.05 * 2**attempt)


def _check(response: httpx.Response) -> Any:
    status = response.status_code
    if status >= 300:
        raise error_from_response(status, response.content, response.headers)
    try:
        return response.json()
    except ValueError:  # not the worker answering (a proxy's page, another server)
        text = response.text[:200]
        raise WorkerError(f"HTTP_{status}", f"the answer is not JSON: {text!r}", status=status) from None


# -- sync -----------------------------------------------------------------------------------


class Client(_Base[httpx.Client, "Stream"]):
    """The worker's API, blocking. `url` defaults to http://127.0.0.1:8080; the token is
    `api_token` or else $WORKER_ORCD_API_TOKEN. Pass `http_client` to reuse a pooled
    `httpx.Client` (it is not closed by `close()`); otherwise one is made and owned."""

    def _new_http(self, timeout: float | httpx.Timeout | None) -> httpx.Client:
        return httpx.Client(timeout=timeout)

    def _new_stream(self, chat: bool, *request: Any) -> Stream:
        return (ChatStream if chat else Stream)(self, *request)

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model(self) -> str:
        """The name of the model the worker serves (GET /v1/models)."""
        if self._model is None:
            self._model = self._model_of(_check(self.http.get(self._url("/v1/models"), headers=self._headers)))
        return self._model

    def cancel(self, job_id: str) -> dict[str, Any]:
        """POST /cancel: `{"status": "cancelling", "job_id"}`, whatever the job's state
        (WO-CANCEL-1). Sent again after a connection error (up to `cancel_retries` times:
        a cancel is idempotent), never after an HTTP error, which is raised."""
        attempt = 0
        while True:
            try:
                response = self.http.post(self._url("/cancel"), json={"job_id": job_id}, headers=self._headers)
            except _RETRY_ON:
                if attempt >= self.cancel_retries:
                    raise
                time.sleep(self._pause(attempt))  # pacing between attempts
                attempt += 1
                continue
            return _check(response)

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}: the job's state, text so far, cancel latencies (NotFound if unknown)."""
        return _check(self.http.get(self._url(self._job_path(job_id)), headers=self._headers))

    def jobs(self, **query: Any) -> list[dict[str, Any]]:
        """GET /jobs: the caller's recent jobs, newest first (`state=`, `limit=`)."""
        params = {k: v for k, v in query.items() if v is not None}
        return _check(self.http.get(self._url("/jobs"), params=params, headers=self._headers))["jobs"]

    def health(self) -> dict[str, Any]:
        """GET /health."""
        return _check(self.http.get(self._url("/health"), headers=self._headers))

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self.cancel(job_id)
        except (httpx.HTTPError, WorkerError):
            pass  # closing the stream next still cancels it, as a disconnect


@dataclass(eq=False, repr=False)
class _StreamState(Generic[C]):
    """A stream's request and what it has seen, kept by the raw reader; the typed views
    are built on demand."""

    client: C
    job_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    cancel_on_exit: bool
    response: httpx.Response | None = field(default=None, init=False)
    _closed: bool = field(default=False, init=False)
    _started_sse: SseEvent | None = field(default=None, init=False)
    _terminal_sse: SseEvent | None = field(default=None, init=False)
    _started: Started | None = field(default=None, init=False)
    _terminal: End | Error | None = field(default=None, init=False)

    @property
    def started(self) -> Started | None:
        """The `started` event, once read (None for a job cancelled while it waited)."""
        if self._started is None and self._started_sse is not None:
            self._started = from_sse(self._started_sse)  # type: ignore[assignment]
        return self._started

    @property
    def terminal(self) -> End | Error | None:
        """The terminal event, once read."""
        if self._terminal is None and self._terminal_sse is not None:
            self._terminal = from_sse(self._terminal_sse)  # type: ignore[assignment]
        return self._terminal

    @property
    def ended(self) -> bool:
        return self._terminal_sse is not None

    def _cancels_on_close(self, cancel: bool | None) -> bool:
        """Whether closing now sends the job's cancel: asked to, and the job not seen ending."""
        wanted = self.cancel_on_exit if cancel is None else cancel
        return wanted and self.response is not None and self._terminal_sse is None

    def _note(self, event: SseEvent) -> bool:
        """Keep the raw event a typed view is made of; True for the terminal one."""
        name = event.name
        if name in TERMINAL_NAMES:
            self._terminal_sse = event
            return True
        if name == "started":
            self._started_sse = event
        return False

    def _typed(self, event: SseEvent) -> StreamEvent:
        typed = from_sse(event)
        if typed.terminal:
            self._terminal = typed  # type: ignore[assignment]
        elif type(typed) is Started:
            self._started = typed
        return typed

    def _chat_events(self) -> ChatEvents:
        return ChatEvents(self.job_id, bool(self.body.get("stop")))


class Stream(_StreamState["Client"]):
    """One job's stream. Iterate for typed events; `sse_events()` gives the reader's raw
    SseEvents instead (no typed event built: for code that only counts and times tokens).
    Both continue from where the other stopped."""

    path = "/execute"
    _raw: Iterator[SseEvent] | None = None

    def open(self) -> Stream:
        """Send the request and read the answer's headers; raises WorkerError for an HTTP error.
        Once open, it stays so: entering the with block after open() sends nothing more."""
        if self.response is not None:
            return self
        http = self.client.http
        self._prepare()
        request = http.build_request("POST", self.client._url(self.path), json=self.body, headers=self.headers)
        try:
            response = http.send(request, stream=True)
        except KeyboardInterrupt:
            # The job may be queued already: cancel it (or, not yet arrived, keep it from running).
            self.client._cancel_quietly(self.job_id)
            raise
        if response.status_code != 200:
            try:
                response.read()
            finally:
                response.close()
            raise error_from_response(response.status_code, response.content, response.headers)
        self.response = response
        return self

    def __enter__(self) -> Stream:
        return self.open()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def close(self, cancel: bool | None = None) -> None:
        """Close the connection; before that, if the job has not ended, POST /cancel for it
        (`cancel`, default `cancel_on_exit`). Errors of that cancel are not raised: the
        closed connection cancels the job anyway."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._cancels_on_close(cancel):
                self.client._cancel_quietly(self.job_id)
        finally:
            if self.response is not None:
                self.response.close()

    def cancel(self) -> dict[str, Any]:
        """POST /cancel for this job; go on reading to get its CANCELLED (or its end, if
        the job finished first)."""
        return self.client.cancel(self.job_id)

    def sse_events(self) -> Iterator[SseEvent]:
        if self._raw is None:
            if self.response is None:
                raise RuntimeError("the stream is not open: use it in a with block, or call open()")
            self._raw = self._read(self.response)
        return self._raw

    def _prepare(self) -> None:
        """What must be known before the request is sent (chat: the model's name)."""

    def _source(self, chunks: Iterator[bytes]) -> Iterator[SseEvent]:
        return iter_events(chunks)

    def _read(self, response: httpx.Response) -> Iterator[SseEvent]:
        # iter_raw: no decoding layers; the worker sends no Content-Encoding.
        chunks = response.iter_bytes() if "content-encoding" in response.headers else response.iter_raw()
        for event in self._source(chunks):
            ended = event.name != "token" and self._note(event)  # tokens: the fast path
            yield event
            if ended:
                return  # nothing follows a terminal event (WO-JOB-2)
        raise IncompleteStream(self.job_id)

    def __iter__(self) -> Iterator[StreamEvent]:
        for event in self.sse_events():
            yield self._typed(event)

    def text(self) -> str:
        """Read the rest of the stream; the text of its tokens. The terminal event is then
        in `terminal`."""
        return "".join(e.text for e in self if type(e) is Token)


# -- async ----------------------------------------------------------------------------------


class AsyncClient(_Base[httpx.AsyncClient, "AsyncStream"]):
    """Client for asyncio: the same methods, awaited; `stream()` is an async context manager.
    Cancelling the task inside `async with client.stream(...)` sends the job's cancel."""

    def _new_http(self, timeout: float | httpx.Timeout | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout)

    def _new_stream(self, chat: bool, *request: Any) -> AsyncStream:
        return (AsyncChatStream if chat else AsyncStream)(self, *request)

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def model(self) -> str:
        if self._model is None:
            self._model = self._model_of(_check(await self.http.get(self._url("/v1/models"), headers=self._headers)))
        return self._model

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Client.cancel, awaited."""
        attempt = 0
        while True:
            try:
                response = await self.http.post(self._url("/cancel"), json={"job_id": job_id}, headers=self._headers)
            except _RETRY_ON:
                if attempt >= self.cancel_retries:
                    raise
                await asyncio.sleep(self._pause(attempt))  # pacing between attempts
                attempt += 1
                continue
            return _check(response)

    async def job(self, job_id: str) -> dict[str, Any]:
        return _check(await self.http.get(self._url(self._job_path(job_id)), headers=self._headers))

    async def jobs(self, **query: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in query.items() if v is not None}
        return _check(await self.http.get(self._url("/jobs"), params=params, headers=self._headers))["jobs"]

    async def health(self) -> dict[str, Any]:
        return _check(await self.http.get(self._url("/health"), headers=self._headers))

    async def _cancel_quietly(self, job_id: str) -> None:
        """The cancel runs as a task of its own and is shielded: a task being cancelled
        (perhaps again, while it waits for this) still gets its job's cancel sent."""

        async def send() -> None:
            try:
                await self.cancel(job_id)
            except (httpx.HTTPError, WorkerError):
                pass  # closing the stream next still cancels it, as a disconnect

        task = asyncio.ensure_future(send())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        await asyncio.shield(task)


class AsyncStream(_StreamState["AsyncClient"]):
    """Stream for asyncio: `async for` typed events, `sse_events()` for raw ones.

    The body is read by a task of its own, so cancelling the task that iterates never
    interrupts a read: httpx closes a connection whose read was cancelled, which the
    worker would take for a disconnect before the cancel could be sent.
    """

    path = "/execute"
    _raw: AsyncIterator[SseEvent] | None = None
    _events: asyncio.Queue | None = None
    _reader: asyncio.Task | None = None

    async def open(self) -> AsyncStream:
        if self.response is not None:
            return self
        http = self.client.http
        await self._prepare()
        request = http.build_request("POST", self.client._url(self.path), json=self.body, headers=self.headers)
        try:
            response = await http.send(request, stream=True)
        except (KeyboardInterrupt, asyncio.CancelledError):
            # The job may be queued already: cancel it (or, not yet arrived, keep it from running).
            await self.client._cancel_quietly(self.job_id)
            raise
        if response.status_code != 200:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise error_from_response(response.status_code, response.content, response.headers)
        self.response = response
        self._events = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._pump(response, self._events, self._source))
        return self

    async def __aenter__(self) -> AsyncStream:
        return await self.open()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self.aclose()

    async def aclose(self, cancel: bool | None = None) -> None:
        """Stream.close for asyncio: the cancel first (the connection still open), then the
        reading task and the connection."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._cancels_on_close(cancel):
                await self.client._cancel_quietly(self.job_id)
        finally:
            if self._reader is not None:
                self._reader.cancel()
            if self.response is not None:
                await self.response.aclose()

    async def cancel(self) -> dict[str, Any]:
        return await self.client.cancel(self.job_id)

    def sse_events(self) -> AsyncIterator[SseEvent]:
        if self._raw is None:
            if self._events is None:
                raise RuntimeError("the stream is not open: use it in an async with block, or await open()")
            self._raw = self._read(self._events)
        return self._raw

    async def _prepare(self) -> None:
        """What must be known before the request is sent (chat: the model's name)."""

    def _source(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[SseEvent]:
        return aiter_events(chunks)

    @staticmethod
    async def _pump(response: httpx.Response, events: asyncio.Queue, source: Any) -> None:
        """Read the body, parse it as it comes (events are stamped on arrival), queue the
        events, up to the terminal one; then _END, or the exception that stopped it."""
        chunks = response.aiter_bytes() if "content-encoding" in response.headers else response.aiter_raw()
        try:
            async for event in source(chunks):
                events.put_nowait(event)
                if is_terminal(event):
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the reader, raised there
            events.put_nowait(exc)
        finally:
            events.put_nowait(_END)

    async def _read(self, events: asyncio.Queue) -> AsyncIterator[SseEvent]:
        while True:
            item = await events.get()
            if item is _END:
                break
            if isinstance(item, Exception):
                raise item
            ended = self._note(item)
            yield item
            if ended:
                return
        raise IncompleteStream(self.job_id)

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        async for event in self.sse_events():
            yield self._typed(event)

    async def text(self) -> str:
        return "".join([e.text async for e in self if type(e) is Token])


# -- chat, through the OpenAI route ---------------------------------------------------------


def _made(name: str, data: dict[str, Any], source: SseEvent) -> SseEvent:
    event = SseEvent(name, source.raw, source.at)
    event._data = data  # decoded already: `raw` stays the chunk it was made of
    return event


class ChatEvents:
    """OpenAI chat stream chunks → the worker's own events (`started`, `token`, `end`,
    `error`), so a chat reads like /execute. The role chunk is `started`, each content
    chunk a token, the finish reason and the usage chunk make `end`; an `{"error"}`
    chunk is `error`, with the worker's fields (code, retriable, stop_ms, ...)."""

    __slots__ = ("finish", "index", "job_id", "stops")

    def __init__(self, job_id: str, stops: bool) -> None:
        self.job_id = job_id
        self.stops = stops
        self.index = 0
        self.finish: str | None = None

    def map(self, events: Iterable[SseEvent]) -> Iterator[SseEvent]:
        for event in events:
            mapped = self.one(event)
            if mapped is not None:
                yield mapped

    async def amap(self, events: AsyncIterator[SseEvent]) -> AsyncIterator[SseEvent]:
        async for event in events:
            mapped = self.one(event)
            if mapped is not None:
                yield mapped

    def one(self, event: SseEvent) -> SseEvent | None:
        if is_done(event):  # no usage chunk came: count the token events
            return self._end(event, None) if self.finish is not None else None
        error = openai_error_of(event)
        if error is not None:
            code = error.get("code") or ErrorCode.INTERNAL.value
            retriable = bool(error.get("retriable", False))
            made: dict[str, Any] = {"code": code, "message": error.get("message", ""), "retriable": retriable}
            made.update((k, error[k]) for k in ("tokens_out", "stop_ms", "cancel_ms", "forced") if k in error)
            return _made("error", made, event)
        data = event.data
        choices = data.get("choices")
        if not choices:
            usage = data.get("usage")
            if usage and self.finish is not None:
                return self._end(event, usage.get("completion_tokens"))
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            index, self.index = self.index, self.index + 1
            return _made("token", {"t": content, "i": index}, event)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
            return None  # the usage chunk follows (stream_options.include_usage)
        if delta.get("role"):
            started = {"job_id": data.get("id", self.job_id), "model": data.get("model"), "started_at": None}
            started.update(seed=None, prompt_tokens=None, correlation_id=None)
            return _made("started", started, event)
        return None

    def _end(self, event: SseEvent, tokens_out: int | None) -> SseEvent:
        finish = self.finish
        reason = "max_tokens" if finish == "length" else ("stop" if self.stops else "eos")
        data = {"stop_reason": reason, "tokens_out": self.index if tokens_out is None else tokens_out}
        data.update(decode_time_ms=None, finish_reason=finish)
        return _made("end", data, event)


class ChatStream(Stream):
    """A Stream of POST /v1/chat/completions, its chunks read as the worker's events."""

    path = "/v1/chat/completions"

    def _prepare(self) -> None:
        if self.body.get("model") is None:
            self.body["model"] = self.client.model()

    def _source(self, chunks: Iterator[bytes]) -> Iterator[SseEvent]:
        return self._chat_events().map(iter_events(chunks))


class AsyncChatStream(AsyncStream):
    path = "/v1/chat/completions"

    async def _prepare(self) -> None:
        if self.body.get("model") is None:
            self.body["model"] = await self.client.model()

    def _source(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[SseEvent]:
        return self._chat_events().amap(aiter_events(chunks))
