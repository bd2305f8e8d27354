"""`POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models` (contract: OpenAI-compatible API).

A thin layer over the worker's own path: the request becomes a job accepted by
`worker_orcd.http.accept` exactly as an `/execute` is (same queue, ledger,
tenants, metrics, cancel and disconnect handling); only the request's
parameters and the answer's encoding differ. The completion's `id` is the
job's id, so `POST /cancel` and `GET /jobs/{id}` take it.
"""

from __future__ import annotations

import time
from typing import Any

from msgspec.structs import asdict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker_orcd.http.accept import (
    TokenAdjust,
    accept,
    collect_job,
    ensure_accepting,
    stream_response,
)
from worker_orcd.http.errors import RequestError
from worker_orcd.http.openai.chunks import StreamEncoder, completion_body
from worker_orcd.http.openai.errors import (
    NO_RETRY,
    OpenAIError,
    from_request_error,
    invalid,
)
from worker_orcd.http.openai.params import (
    CHAT,
    COMPLETION,
    REQUEST_ID_HEADER,
    OpenAICompletionRequest,
    OpenAIRequest,
    check_model,
    parse_chat,
    parse_completion,
    request_id,
)
from worker_orcd.http.openai.template import (
    NO_SPECIAL_TOKENS,
    ChatTemplateError,
    render_off_loop,
    special_tokens_of,
    uses_special_tokens,
)
from worker_orcd.http.sse import EventStream
from worker_orcd.http.validation import MAX_PROMPT_CHARS, parse_json_object
from worker_orcd.worker import Worker

OWNED_BY = "worker-orcd"
# Status for the answer to a client that left before its job ended (nobody reads it).
CLIENT_CLOSED = 499


async def chat_completions(request: Request) -> Response | EventStream:
    return await _complete(request, CHAT)


async def completions(request: Request) -> Response | EventStream:
    return await _complete(request, COMPLETION)


async def list_models(request: Request) -> JSONResponse:
    worker: Worker = request.app.state.worker
    return JSONResponse({"object": "list", "data": [_model_card(worker)]})


def _model_card(worker: Worker) -> dict[str, Any]:
    try:
        created = int(worker.model_path.stat().st_mtime)
    except OSError:
        created = 0
    return {"id": worker.model.name, "object": "model", "created": created, "owned_by": OWNED_BY}


async def _complete(request: Request, kind: str) -> Response | EventStream:
    worker: Worker = request.app.state.worker
    try:
        req, job_id, prompt, adjust = await _prepare(request, worker, kind)
        log_fields: dict[str, Any] = {"api": f"openai.{kind}"}
        if req.user is not None:
            log_fields["user"] = req.user
        # Both OpenAI bodies make their Sampling (SampledRequest); mypy reads pydantic's
        # declared fields as other types than the protocol's.
        job, channel = await accept(
            request,
            worker,
            job_id,
            prompt,
            req,  # type: ignore[arg-type]
            adjust=adjust,
            log_fields=log_fields,
        )
    except RequestError as exc:
        worker.rejected()
        return from_request_error(exc, kind).response()
    except OpenAIError as exc:
        worker.rejected()
        return exc.response()

    created = int(time.time())
    model = worker.model.name
    headers = {REQUEST_ID_HEADER: job_id}
    if req.stream:
        encoder = StreamEncoder(kind, job_id, created, model, job.prompt_token_count, req.include_usage)
        return stream_response(job, channel, worker, encoder, headers)

    events = await collect_job(job, channel, worker, request)
    if events is None:  # the client left: its job was cancelled
        return Response(status_code=CLIENT_CLOSED)
    status, body = completion_body(kind, job_id, created, model, job.prompt_token_count, events)
    if status != 200 and (REQUEST_ID_HEADER in request.headers or not body["error"].get("retriable")):
        headers.update(NO_RETRY)  # the same X-Request-Id would be a 409; a non-retriable end stays one
    return JSONResponse(body, status_code=status, headers=headers)


async def _prepare(request: Request, worker: Worker, kind: str) -> tuple[OpenAIRequest, str, str, TokenAdjust | None]:
    """Validate the request; the job id, the prompt and, for chat, what its tokens need."""
    ensure_accepting(worker)
    try:
        body = parse_json_object(await request.body())
    except RequestError as exc:
        raise invalid(f"The request body could not be parsed: {exc.message}", None, "invalid_json") from None
    req: OpenAIRequest = parse_chat(body) if kind == CHAT else parse_completion(body)
    model = worker.model
    check_model(req.model, model.name)
    job_id = request_id(request.headers, kind)
    if isinstance(req, OpenAICompletionRequest):
        return req, job_id, req.prompt, None

    source = model.chat_template
    if not source:
        raise invalid(
            f"The model '{model.name}' has no chat template (tokenizer.chat_template in its GGUF "
            "file), so messages cannot be made into a prompt; use /v1/completions with a prompt "
            "formatted for the model.",
            "messages",
            "chat_template_missing",
        )
    special = special_tokens_of(asdict(model)) if uses_special_tokens(source) else NO_SPECIAL_TOKENS
    try:
        prompt = await render_off_loop(source, req.template_messages, special)
    except ChatTemplateError as exc:
        raise invalid(str(exc), "messages", "chat_template_error") from None
    if not prompt:
        raise invalid("The model's chat template made an empty prompt of these messages.", "messages")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise invalid(
            f"The prompt the chat template makes of these messages is {len(prompt)} characters; "
            f"at most {MAX_PROMPT_CHARS}.",
            "messages",
            "context_length_exceeded",
        )
    if special.bos_id is None or not prompt.startswith(special.bos):
        return req, job_id, prompt, None
    bos_id = special.bos_id

    def one_bos(tokens: list[int]) -> list[int]:
        # The template wrote the BOS and the model adds its own: keep one, as llama.cpp does.
        return tokens[1:] if tokens[:2] == [bos_id, bos_id] else tokens

    return req, job_id, prompt, one_bos


OPENAI_ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
