"""The OpenAI-compatible API (its section of specs/contract.md), driven by the official `openai` client
against the real worker: answers whole and streamed, cancel by id, disconnects, errors,
usage, tenants."""

from __future__ import annotations

import json
import socket
import threading

import openai
import pytest

from testkit.prompts import CHAT
from testkit.streams import assert_error, cancel, job_of, uid, wait_active, wait_job
from testkit.waiting import wait_until
from testkit.wire import execute, iter_events, read_events, text_of
from testkit.worker import WorkerProcess

pytestmark = pytest.mark.usefixtures("worker_idle")

SYSTEM = "You are a helpful assistant."
QUESTION = "What is the capital of France?"
FRANCE = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
# SmolLM2's own template (from its GGUF) makes exactly this prompt of FRANCE.
FRANCE_PROMPT = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + CHAT.format(QUESTION)
FRANCE_ANSWER = "The capital of France is Paris."  # greedy, then EOS
STORY = [{"role": "user", "content": "Write a long, detailed story about a dragon who learns to bake bread."}]
REQUEST_ID = "X-Request-Id"


def oai(worker: WorkerProcess, api_key: str = "unused", **kwargs) -> openai.OpenAI:
    # No retries: every test sees the worker's first answer.
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def model(worker) -> str:
    with worker.client() as c:
        return c.get("/health").json()["model"]


@pytest.fixture
def api(worker) -> openai.OpenAI:
    with oai(worker) as client:
        yield client


# -- models ------------------------------------------------------------------------------


def test_models_lists_the_loaded_model(api, model):
    """WO-OAI-2: one model, named as /health names it."""
    models = api.models.list()
    assert [m.id for m in models.data] == [model]
    card = models.data[0]
    assert card.object == "model" and card.owned_by == "worker-orcd" and card.created > 0


# -- answers whole and streamed ----------------------------------------------------------


def test_chat_completion_matches_execute(api, client, model):
    """WO-OAI-4, WO-OAI-5: the GGUF's template makes the prompt /execute would get by hand;
    greedy, the same answer, and usage counts the same tokens."""
    r = api.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=32)
    assert r.object == "chat.completion" and r.model == model
    assert r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.content == FRANCE_ANSWER

    events = execute(client, {"job_id": uid("oai-same"), "prompt": FRANCE_PROMPT, "max_tokens": 32, "temperature": 0})
    assert text_of(events) == FRANCE_ANSWER
    assert r.usage.prompt_tokens == events[0].data["prompt_tokens"]
    assert r.usage.completion_tokens == events[-1].data["tokens_out"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    # WO-OAI-7: the completion is a job like any other.
    job = job_of(client, r.id)
    assert job["state"] == "completed" and job["text"] == FRANCE_ANSWER
    assert job["tokens_out"] == r.usage.completion_tokens and job["stop_reason"] == "eos"


def test_chat_stream_chunks_and_usage(api, client, model):
    """WO-OAI-6: a role chunk, one content chunk per token, the finish reason, the usage
    chunk (include_usage), and usage equal to what was streamed."""
    stream = api.chat.completions.create(
        model=model,
        messages=FRANCE,
        temperature=0,
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    job_id = chunks[0].id
    assert job_id.startswith("chatcmpl-") and all(c.id == job_id for c in chunks)
    assert stream.response.headers[REQUEST_ID] == job_id
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    assert len({c.created for c in chunks}) == 1

    first, *content, last, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(len(c.choices) == 1 and c.choices[0].delta.role is None for c in content)
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in [first, *content])
    assert "".join(c.choices[0].delta.content for c in content) == FRANCE_ANSWER
    assert last.choices[0].finish_reason == "stop" and last.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == len(content)  # one chunk per token, all ASCII here
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + len(content)
    job = job_of(client, job_id)
    assert job["tokens_out"] == len(content) and job["text"] == FRANCE_ANSWER


def test_stream_wire_format(worker, model):
    """WO-OAI-6: `data: {json}` lines as OpenAI sends them, `data: [DONE]` last; no usage
    field without include_usage."""
    body = {"model": model, "messages": FRANCE, "temperature": 0, "max_tokens": 3, "stream": True}
    with worker.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = read_events(r)
    assert {e.name for e in events} == {"message"}  # `data:` lines only, as OpenAI sends them
    payloads = [e.raw for e in events]
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, None, "length"]
    for chunk in chunks:
        assert list(chunk) == ["id", "object", "created", "model", "choices"]
        assert list(chunk["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"][0]["delta"] == {}


def test_text_completion_whole_and_streamed(api, client, model):
    """WO-OAI-2, WO-OAI-5, WO-OAI-6: /v1/completions by the file stem, a one-string list as
    the prompt, a stop string; streamed, the same text in `text_completion` chunks."""
    stem = model.removesuffix(".gguf")
    args = dict(prompt=["Count from one to ten: one, two,"], temperature=0, max_tokens=30, stop=" seven")
    r = api.completions.create(model=stem, **args)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == model
    assert r.choices[0].text == " three, four, five, six," and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == job_of(client, r.id)["tokens_out"]

    chunks = list(api.completions.create(model=model, stream=True, stream_options={"include_usage": True}, **args))
    *texts, last, usage = chunks
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in texts) == r.choices[0].text
    assert last.choices[0].text == "" and last.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage.completion_tokens == r.usage.completion_tokens
    assert usage.usage.prompt_tokens == r.usage.prompt_tokens


def test_completion_default_max_tokens_is_16(api, model):
    """WO-OAI-3: the legacy endpoint's default length, as OpenAI's."""
    r = api.completions.create(model=model, prompt="Once upon a time", temperature=0)
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


# -- cancel, disconnect ------------------------------------------------------------------


def test_cancel_by_id_mid_stream(api, client, model):
    """WO-OAI-7, WO-OAI-8: POST /cancel with the X-Request-Id stops the stream; the openai
    client raises APIError with the worker's code and the cancel's figures."""
    job_id = uid("oai-cancel")
    stream = api.chat.completions.create(
        model=model, messages=STORY, temperature=0, max_tokens=400, stream=True, extra_headers={REQUEST_ID: job_id}
    )
    chunks = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 4:  # the role chunk and three tokens
                cancel(client, job_id)
    error = raised.value
    assert type(error) is openai.APIError  # not a status error: the stream had answered 200
    assert error.code == "CANCELLED" and error.type == "cancelled" and error.param is None
    assert error.message == "Job cancelled by client request"
    assert error.body["retriable"] is False and error.body["tokens_out"] >= 3
    assert 0 <= error.body["stop_ms"] <= error.body["cancel_ms"]
    assert all(c.id == job_id for c in chunks)

    job = job_of(client, job_id)
    assert job["state"] == "cancelled" and job["cancel_reason"] == "client"
    assert job["tokens_out"] == error.body["tokens_out"]
    assert job["text"] == "".join(c.choices[0].delta.content or "" for c in chunks)


def test_a_cancelled_stream_ends_with_one_error_line_and_no_done(worker, client, model):
    """WO-OAI-8 on the wire, read to the stream's end (the openai client stops at the error):
    the error object is the last line, the only one, and no `[DONE]` comes."""
    job_id = uid("oai-cancel-wire")
    body = {"model": model, "messages": STORY, "temperature": 0, "max_tokens": 400, "stream": True}
    with worker.client() as c, c.stream("POST", "/v1/chat/completions", json=body, headers={REQUEST_ID: job_id}) as r:
        assert r.status_code == 200
        payloads = []
        for event in iter_events(r):
            payloads.append(event.raw)
            if len(payloads) == 4:  # the role chunk and three tokens
                cancel(client, job_id)
    assert "[DONE]" not in payloads
    errors = [p for p in payloads if "error" in json.loads(p)]
    assert errors == [payloads[-1]], payloads[-3:]
    error = json.loads(errors[0])["error"]
    assert error["code"] == "CANCELLED" and error["type"] == "cancelled"
    job = job_of(client, job_id)
    assert job["state"] == "cancelled" and (job["stop_ms"], job["cancel_ms"]) == (error["stop_ms"], error["cancel_ms"])


def test_cancel_of_a_whole_answer(worker, client, model):
    """WO-OAI-8: a cancelled non-streaming request is answered 499 with the error object."""
    job_id = uid("oai-cancel-whole")
    outcome: dict = {}

    def ask() -> None:
        with oai(worker) as api:
            try:
                api.chat.completions.create(
                    model=model, messages=STORY, temperature=0, max_tokens=400, extra_headers={REQUEST_ID: job_id}
                )
            except openai.APIStatusError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=ask)
    thread.start()
    wait_active(client, job_id)
    wait_until(lambda: job_of(client, job_id)["tokens_out"] >= 2)
    cancel(client, job_id)
    thread.join(60)
    error = outcome["error"]
    assert error.status_code == 499 and error.code == "CANCELLED" and error.type == "cancelled"
    assert error.response.headers["x-should-retry"] == "false"
    assert job_of(client, job_id)["state"] == "cancelled"


def test_closing_the_stream_cancels(api, client, model):
    """WO-OAI-9: a client that closes its stream cancels the job, as on /execute."""
    job_id = uid("oai-close")
    stream = api.chat.completions.create(
        model=model, messages=STORY, temperature=0, max_tokens=400, stream=True, extra_headers={REQUEST_ID: job_id}
    )
    for n, _ in enumerate(stream, 1):
        if n == 4:
            break
    stream.close()
    job = wait_job(client, job_id, "cancelled")
    assert job["cancel_reason"] == "disconnect" and job["error"]["code"] == "CANCELLED"
    assert 3 <= job["tokens_out"] < 400


def test_leaving_a_whole_answer_cancels(worker, client, model):
    """WO-OAI-9: a client that goes away before its non-streaming answer cancels the job."""
    job_id = uid("oai-leave")
    body = json.dumps({"model": model, "messages": STORY, "temperature": 0, "max_tokens": 400}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{REQUEST_ID}: {job_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", worker.port)) as sock:
        sock.sendall(head + body)
        wait_active(client, job_id)
    job = wait_job(client, job_id, "cancelled")
    assert job["cancel_reason"] == "disconnect"


# -- errors -------------------------------------------------------------------------------


def test_unknown_model_is_404(api):
    """WO-OAI-2, WO-OAI-10."""
    with pytest.raises(openai.NotFoundError) as raised:
        api.chat.completions.create(model="gpt-4o", messages=FRANCE)
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    assert raised.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    "extra, param, code",
    [
        ({"n": 2}, "n", "unsupported_value"),
        ({"logprobs": True}, "logprobs", "unsupported_value"),
        ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_value"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
        ({"extra_body": {"mirostat": 2}}, "mirostat", "unknown_parameter"),
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsupported_or_invalid_parameters_are_400(api, client, model, extra, param, code):
    """WO-OAI-3, WO-OAI-10: never silently ignored; nothing is queued."""
    job_id = uid("oai-400")
    with pytest.raises(openai.BadRequestError) as raised:
        api.chat.completions.create(model=model, messages=FRANCE, extra_headers={REQUEST_ID: job_id}, **extra)
    error = raised.value
    assert error.status_code == 400 and error.type == "invalid_request_error"
    assert error.param == param and error.code == code
    assert set(error.body) == {"message", "type", "param", "code"}
    assert_error(client.get(f"/jobs/{job_id}"), 404, "JOB_NOT_FOUND")


def test_harmless_defaults_are_accepted(api, model):
    """WO-OAI-3: OpenAI parameters at values that change nothing."""
    r = api.chat.completions.create(
        model=model,
        messages=FRANCE,
        temperature=0,
        max_completion_tokens=32,
        n=1,
        logprobs=False,
        presence_penalty=0,
        frequency_penalty=0,
        response_format={"type": "text"},
        user="someone",
        seed=-5,
    )
    assert r.choices[0].message.content == FRANCE_ANSWER


def test_bad_json_and_bad_request_id(worker, model):
    """WO-OAI-7, WO-OAI-10: OpenAI's error shape for a body that is not JSON, and for an
    X-Request-Id that cannot be a job id."""
    with worker.client() as c:
        r = c.post("/v1/chat/completions", content=b'{"model": ', headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_json" and r.json()["error"]["type"] == "invalid_request_error"
        body = {"model": model, "prompt": "Hi", "max_tokens": 1}
        r = c.post("/v1/completions", json=body, headers={REQUEST_ID: "has spaces"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"


def test_a_used_request_id_is_409(api, model):
    """WO-OAI-7: the id is the job's; one tenant's ids are unique. The answer tells the
    openai client not to retry, so its default retries do not apply."""
    job_id = uid("oai-twice")
    args = dict(model=model, prompt="Hi", max_tokens=1, extra_headers={REQUEST_ID: job_id})
    assert api.completions.create(**args).id == job_id
    with pytest.raises(openai.ConflictError) as raised:
        api.with_options(max_retries=2).completions.create(**args)
    assert raised.value.code == "JOB_EXISTS"
    assert raised.value.response.headers["x-should-retry"] == "false"


# -- tenants and job failures ---------------------------------------------------------------

ALICE, BOB = "oai-alice-token", "oai-bob-token"


@pytest.fixture(scope="module")
def faulty_keyed_worker():
    """Two tenants; a fault for jobs named `oai-fault…`; a 4 s inference timeout."""
    w = WorkerProcess(
        args=["--threads", "1", "--api-key", f"alice={ALICE}", "--api-key", f"bob={BOB}", "--inference-timeout-sec", "4"],
        env={"WORKER_ORCD_FAULTS": "decode=oai-fault"},
    ).start()
    yield w
    w.stop()


def test_tenants_cannot_see_or_cancel_each_others_completions(faulty_keyed_worker):
    """WO-OAI-1 (WO-AUTH-1, WO-AUTH-2): the api_key is the bearer token; another tenant's
    cancel by id does nothing and its GET /jobs/{id} is 404."""
    with oai(faulty_keyed_worker) as nobody, pytest.raises(openai.AuthenticationError) as raised:
        nobody.models.list()
    assert raised.value.code == "UNAUTHORIZED"

    alice, bob = oai(faulty_keyed_worker, ALICE), oai(faulty_keyed_worker, BOB)
    model = alice.models.list().data[0].id
    job_id = uid("oai-tenant")
    stream = alice.chat.completions.create(
        model=model, messages=STORY, temperature=0, max_tokens=60, stream=True, extra_headers={REQUEST_ID: job_id}
    )
    chunks = [next(stream), next(stream)]
    with faulty_keyed_worker.client(headers={"Authorization": f"Bearer {BOB}"}) as as_bob:
        cancel(as_bob, job_id)
        assert_error(as_bob.get(f"/jobs/{job_id}"), 404, "JOB_NOT_FOUND")
    chunks += list(stream)  # alice's stream runs to its end
    assert chunks[-1].choices[0].finish_reason == "length"
    with faulty_keyed_worker.client(headers={"Authorization": f"Bearer {ALICE}"}) as as_alice:
        job = job_of(as_alice, job_id)
    assert job["state"] == "completed" and job["cancel_requested"] is False
    # Ids are per tenant: bob may use the same one; but bob's cancel named an id bob did
    # not have, so it was kept for bob's own job of that id, which ends at once (WO-CANCEL-12).
    with pytest.raises(openai.APIStatusError) as raised:
        bob.completions.create(model=model, prompt="Hi", max_tokens=1, extra_headers={REQUEST_ID: job_id})
    assert raised.value.status_code == 499 and raised.value.code == "CANCELLED"
    assert raised.value.body["tokens_out"] == 0
    alice.close()
    bob.close()


def test_job_failures_end_the_stream_with_their_code(faulty_keyed_worker):
    """WO-OAI-8: an engine failure and the inference timeout end a stream as a cancel does,
    with their stable codes; a whole answer gets the code's HTTP status."""
    with oai(faulty_keyed_worker, ALICE) as alice:
        model = alice.models.list().data[0].id
        stream = alice.chat.completions.create(
            model=model, messages=FRANCE, max_tokens=8, stream=True, extra_headers={REQUEST_ID: uid("oai-fault")}
        )
        with pytest.raises(openai.APIError) as raised:
            list(stream)
        assert raised.value.code == "INTERNAL" and raised.value.type == "server_error"
        assert raised.value.body["retriable"] is False

        # Not retriable: the openai client's own retries stay off even when allowed.
        with pytest.raises(openai.InternalServerError) as raised:
            alice.with_options(max_retries=2).chat.completions.create(
                model=model, messages=FRANCE, max_tokens=8, extra_headers={REQUEST_ID: uid("oai-fault")}
            )
        assert raised.value.status_code == 500 and raised.value.code == "INTERNAL"

        stream = alice.chat.completions.create(model=model, messages=STORY, temperature=0, max_tokens=2000, stream=True)
        with pytest.raises(openai.APIError) as raised:
            list(stream)
        assert raised.value.code == "INFERENCE_TIMEOUT" and raised.value.body["retriable"] is True
