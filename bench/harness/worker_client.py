"""The worker's side of every scenario, over one pooled HTTP client.

One `httpx.Client` is reused for the whole run: a new client (and connection)
costs about 20 ms, which would swamp the figures measured here. Streams and
cancels go through the package's client (`worker_orcd.client.Client`) on that
pooled client; streams are read as its raw SSE events (no typed event is built:
tokens are only counted and stamped). A stream and a cancel in flight together
use two pooled connections; the stream of a job to be cancelled is read on a
thread, so `CANCELLED` is stamped when it arrives even if that is before the
cancel's own 202 has been read.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from bench.harness.background import BackgroundEvents
from bench.harness.runs import CancelRun, StreamRun
from worker_orcd.client import Client, Stream
from worker_orcd.client.sse import SseEvent

TERMINAL = ("end", "error")


class WorkerClient:
    def __init__(self, url: str, *, api_token: str | None = None, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_keepalive_connections=4),
        )
        # No cancel is sent again after a connection error: it would blur the figure it is part of.
        self.api = Client(http_client=self.http, cancel_retries=0)
        # Job ids stay unique on a long-lived worker whose ledger remembers old ones.
        self._prefix = f"bench-{os.getpid()}-{int(time.time())}"
        self._ids = itertools.count()

    def close(self) -> None:
        self.http.close()

    def health(self) -> dict[str, Any]:
        return self.api.health()

    def warm_up(self) -> None:
        """Open the pooled connections a stream and a cancel need; run a job (the first is slow)."""
        self.stream(_WARM_PROMPT, max_tokens=64)
        self.cancel_after_tokens(_WARM_PROMPT, after=1, max_tokens=8)

    def new_job_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _stream(self, prompt: str, max_tokens: int) -> Stream:
        return self.api.stream(prompt, job_id=self.new_job_id(), max_tokens=max_tokens, temperature=0.0)

    def stream(self, prompt: str, max_tokens: int) -> StreamRun:
        """One job read to its end; a job that fails is an error, not a figure."""
        run = StreamRun(sent_at=time.perf_counter())
        with self._stream(prompt, max_tokens) as stream:
            for event in stream.sse_events():
                if event.name == "token":
                    run.token_times.append(event.at)
                elif event.name in TERMINAL:
                    data = event.data
                    if event.name == "error":
                        raise RuntimeError(f"job failed: {data}")
                    run.stop_reason = data["stop_reason"]
                    break
        return run

    def first_token(self, prompt: str) -> StreamRun:
        return self.stream(prompt, max_tokens=1)

    def open_job(self, prompt: str, max_tokens: int) -> "OpenJob":
        """Send a job and return with its stream open (headers read, events not yet)."""
        stream = self._stream(prompt, max_tokens)
        sent = time.perf_counter()
        stream.open()  # an HTTP error is raised (WorkerError), nothing left open
        # Read on a thread: CANCELLED is stamped when it arrives, not after the 202 is read.
        return OpenJob(stream.job_id, sent, stream, BackgroundEvents(stream.sse_events()))

    def read_tokens(self, job: "OpenJob", count: int, *, after: float | None = None) -> None:
        """Read events until `count` token events have arrived; with `after` (perf_counter),
        until `count` that arrived after it have been read, the last as it arrives rather
        than from what was buffered."""
        counted = job.seen if after is None else 0
        for event in job.events:
            if event.name == "token":
                job.seen += 1
                counted += after is None or event.at > after
                if counted >= count:
                    return
            elif event.name in TERMINAL:
                job.close()
                raise RuntimeError(f"job ended before {count} tokens: {event.raw}")
        raise RuntimeError("stream ended without a terminal event")

    def cancel_and_finish(self, job: "OpenJob") -> CancelRun:
        """POST /cancel for an open job and read its stream to CANCELLED."""
        try:
            t_sent = time.perf_counter()
            self.api.cancel(job.job_id)  # raises for an HTTP error
            t_ack = time.perf_counter()
            before, after = job.seen, 0
            terminal: SseEvent | None = None
            for event in job.events:
                if event.name == "token":
                    if event.at > t_sent:
                        after += 1
                    else:
                        before += 1
                elif event.name in TERMINAL:
                    terminal = event
                    break
        finally:
            job.close()
        if terminal is None:
            raise RuntimeError("stream ended without a terminal event")
        data = terminal.data
        return CancelRun(
            hit="decode" if (data.get("tokens_out") or 0) > 0 else "prompt",
            client_ms=(terminal.at - t_sent) * 1000.0,
            ack_ms=(t_ack - t_sent) * 1000.0,
            tokens_before=before,
            tokens_after=after,
            code=data.get("code", terminal.name),
            tokens_out=data.get("tokens_out"),
            stop_ms=data.get("stop_ms"),
            cancel_ms=data.get("cancel_ms"),
        )

    def cancel_after_tokens(
        self, prompt: str, after: int, max_tokens: int, before_cancel: Callable[[], None] | None = None
    ) -> CancelRun:
        """Cancel once `after` token events have been read; read on to CANCELLED.

        `before_cancel` runs at that point, before the cancel is sent (memory is sampled there).
        """
        job = self.open_job(prompt, max_tokens)
        try:
            self.read_tokens(job, after)
            if before_cancel is not None:
                before_cancel()
        except BaseException:
            job.close()
            raise
        return self.cancel_and_finish(job)

    def cancel_after_delay(self, prompt: str, delay_s: float, max_tokens: int) -> CancelRun:
        """Cancel `delay_s` after sending the request (during a long prompt); read on to CANCELLED."""
        job = self.open_job(prompt, max_tokens)
        self.wait_until(job, delay_s)
        return self.cancel_and_finish(job)

    @staticmethod
    def wait_until(job: "OpenJob", delay_s: float) -> None:
        left = job.sent_at + delay_s - time.perf_counter()
        if left > 0:
            time.sleep(left)


@dataclass
class OpenJob:
    """A job whose stream is open and partly read."""

    job_id: str
    sent_at: float
    stream: Stream
    events: BackgroundEvents
    seen: int = 0  # token events read so far

    @property
    def response(self) -> httpx.Response:
        return self.stream.response

    def close(self) -> None:
        """Close the stream; a job left before its terminal event is cancelled first."""
        self.stream.close()
        self.events.join(5.0)


_WARM_PROMPT = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"

