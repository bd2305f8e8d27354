"""worker_orcd.client against the real worker (specs/contract.md, "Clients"): streams,
cancels, jobs, health, and the cancel sent when a stream is left early."""

from __future__ import annotations

import asyncio

import pytest

from testkit.prompts import LONG_ANSWER_PROMPT, SHORT_ANSWER, SHORT_PROMPT
from testkit.streams import assert_well_formed, uid, wait_job
from testkit.waiting import wait_until
from tests.e2e.helpers import long_prompt_job
from worker_orcd.client import (
    AsyncClient,
    Client,
    End,
    Error,
    InvalidRequest,
    JobExists,
    NotFound,
    Started,
    Token,
)

pytestmark = pytest.mark.usefixtures("worker_idle")

STOP_MS_BUDGET = 100
CANCEL_MS_BUDGET = 5000


@pytest.fixture
def api(worker):
    with Client(worker.url) as c:
        yield c


def test_stream_job_jobs_health(api, client):
    """WO-CLIENT-1: typed events mirror the stream; job, jobs and health answer."""
    job_id = uid("client-stream")
    with api.stream(SHORT_PROMPT, job_id=job_id, temperature=0, max_tokens=32) as stream:
        events = list(stream)
    assert_well_formed(events)  # the contract's shape, read through the typed events' `data`
    started, *tokens, end = events
    assert isinstance(started, Started) and started.job_id == job_id and started.prompt_tokens > 0
    assert all(isinstance(t, Token) for t in tokens) and [t.index for t in tokens] == list(range(len(tokens)))
    assert "".join(t.text for t in tokens) == SHORT_ANSWER
    assert isinstance(end, End) and end.stop_reason == "eos" and end.tokens_out >= len(tokens)
    assert stream.started == started and stream.terminal == end
    assert started.at <= tokens[0].at <= end.at

    job = api.job(job_id)
    assert job["state"] == "completed" and job["text"] == SHORT_ANSWER
    # The ledger's writer thread records the end just after the stream has it.
    wait_until(lambda: job_id in [j["job_id"] for j in api.jobs(state="completed", limit=10)])
    health = api.health()
    assert health["status"] == "healthy" and health["ready"] is True


def test_errors_carry_the_workers_codes(api):
    """WO-CLIENT-3."""
    job_id = uid("client-errors")
    with pytest.raises(NotFound) as raised:
        api.job(job_id)
    assert raised.value.code == "JOB_NOT_FOUND" and raised.value.status == 404
    with pytest.raises(InvalidRequest) as raised:
        api.stream(SHORT_PROMPT, job_id=job_id, max_tokens=99999).open()
    assert raised.value.details and raised.value.details[0]["field"] == "max_tokens"
    with api.stream(SHORT_PROMPT, job_id=job_id, max_tokens=1) as stream:
        stream.text()
    with pytest.raises(JobExists):
        with api.stream(SHORT_PROMPT, job_id=job_id, max_tokens=1):
            pass
    # The refused duplicate sent no cancel: the first job is untouched.
    assert api.job(job_id)["state"] == "completed" and api.job(job_id)["cancel_requested"] is False


def test_cancel_then_read_on_to_cancelled(api):
    """WO-CLIENT-4: cancel() answers at once; the stream then ends with CANCELLED."""
    job_id = uid("client-cancel")
    with api.stream(LONG_ANSWER_PROMPT, job_id=job_id, max_tokens=400, temperature=0) as stream:
        for event in stream:
            if isinstance(event, Token) and event.index == 2:
                assert stream.cancel() == {"status": "cancelling", "job_id": job_id}
        end = stream.terminal
    assert isinstance(end, Error) and end.cancelled and end.code == "CANCELLED"
    assert 0 <= end.stop_ms <= STOP_MS_BUDGET and end.stop_ms <= end.cancel_ms <= CANCEL_MS_BUDGET
    assert end.tokens_out >= 3 and not end.forced
    assert api.cancel(job_id)["status"] == "cancelling"  # idempotent: 202 again
    assert api.job(job_id)["cancel_reason"] == "client"


def test_leaving_the_block_early_cancels_the_job(api, client):
    """WO-CLIENT-2: a break sends POST /cancel (reason `client`, not a disconnect)."""
    job_id = uid("client-break")
    with api.stream(LONG_ANSWER_PROMPT, job_id=job_id, max_tokens=400, temperature=0) as stream:
        for event in stream:
            if isinstance(event, Token):
                break
    job = wait_job(client, job_id, "cancelled")
    assert job["cancel_reason"] == "client" and job["error"]["code"] == "CANCELLED"
    assert job["tokens_out"] < 400


def test_ctrl_c_in_the_block_cancels_the_job(api, client):
    """WO-CLIENT-2: a KeyboardInterrupt inside the block sends the cancel, then goes on up."""
    job_id = uid("client-interrupt")
    with pytest.raises(KeyboardInterrupt):
        with api.stream(long_prompt_job(job_id)["prompt"], job_id=job_id, max_tokens=64) as stream:
            for _ in stream:  # the prompt takes seconds: `started`, then no token for a while
                raise KeyboardInterrupt
    job = wait_job(client, job_id, "cancelled")
    assert job["cancel_reason"] == "client"


def test_cancelling_the_asyncio_task_cancels_the_job(worker, client):
    """WO-CLIENT-2: task.cancel() inside `async with client.stream(...)` sends the cancel."""
    job_id = uid("client-task")

    async def main() -> None:
        async with AsyncClient(worker.url) as api:
            first_token = asyncio.Event()

            async def read() -> None:
                async with api.stream(LONG_ANSWER_PROMPT, job_id=job_id, max_tokens=400) as stream:
                    async for event in stream:
                        if isinstance(event, Token):
                            first_token.set()

            task = asyncio.create_task(read())
            await asyncio.wait_for(first_token.wait(), 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            job = await api.job(job_id)
            assert job["cancel_requested"] is True and job["cancel_reason"] == "client"

    asyncio.run(main())
    job = wait_job(client, job_id, "cancelled")
    assert job["cancel_reason"] == "client" and job["tokens_out"] < 400


def test_async_stream_to_end(worker):
    """WO-CLIENT-1, for asyncio."""
    job_id = uid("client-async")

    async def main() -> tuple[str, object, dict]:
        async with AsyncClient(worker.url) as api:
            async with api.stream(SHORT_PROMPT, job_id=job_id, temperature=0, max_tokens=32) as stream:
                text = await stream.text()
            return text, stream.terminal, await api.job(job_id)

    text, end, job = asyncio.run(main())
    assert text == SHORT_ANSWER and isinstance(end, End) and end.stop_reason == "eos"
    assert job["state"] == "completed" and job["text"] == SHORT_ANSWER


def test_chat_through_the_workers_template(api, client, worker):
    """WO-CLIENT-10: chat() goes through /v1/chat/completions under the given job id and
    reads like a stream; leaving it early cancels the job as for /execute."""
    job_id = uid("client-chat")
    with api.chat("Name a colour.", job_id=job_id, max_tokens=6, temperature=0) as stream:
        events = list(stream)
    assert_well_formed(events)
    assert events[0].job_id == job_id and events[0].model == api.health()["model"]
    assert events[-1] == End("max_tokens", 6, None)
    job = api.job(job_id)
    assert job["state"] == "completed" and job["text"] == "".join(e.text for e in events[1:-1])
    assert worker.log.wait_for("job_queued", job_id=job_id)["api"] == "openai.chat"

    cut = uid("client-chat-cut")
    with api.chat([{"role": "user", "content": "Tell me a long story."}], job_id=cut, max_tokens=400) as stream:
        for event in stream:
            if isinstance(event, Token):
                assert stream.cancel()["job_id"] == cut
        end = stream.terminal
    assert isinstance(end, Error) and end.code == "CANCELLED"
    assert 0 <= end.stop_ms <= STOP_MS_BUDGET and end.stop_ms <= end.cancel_ms <= CANCEL_MS_BUDGET
    assert wait_job(client, cut, "cancelled")["cancel_reason"] == "client"
