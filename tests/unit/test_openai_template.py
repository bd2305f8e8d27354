"""The model's chat template (WO-OAI-4): SmolLM2's own ChatML from its GGUF, the sandbox,
the BOS and EOS strings, and what the chat route makes of them."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.testclient import TestClient

from tests.unit import fake_engine
from worker_orcd.config import default_model_path
from worker_orcd.engine.gguf import read_value
from worker_orcd.engine.model import Model
from worker_orcd.http.openai.routes import OPENAI_ROUTES, _prepare
from worker_orcd.http.openai.template import (
    NO_SPECIAL_TOKENS,
    ChatTemplateError,
    SpecialTokens,
    render,
    special_tokens_of,
)

GGUF = default_model_path()
SMOLLM2 = read_value(GGUF, "tokenizer.chat_template").decode()
MODEL = GGUF.name


def test_smollm2_chatml():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render(SMOLLM2, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm2_adds_its_default_system_prompt():
    prompt = render(SMOLLM2, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}])
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.__class__.__mro__ }}",  # no way out to Python's objects
        "{{ ''.__class__.__subclasses__() }}",
        "{% set _ = messages.append({'role': 'x'}) %}x",  # the messages cannot be changed
        "{% set _ = messages[0].update({'content': 'x'}) %}x",
    ],
)
def test_the_sandbox_holds(source):
    with pytest.raises(ChatTemplateError):
        render(source, [{"role": "user", "content": "Hi"}])


def test_raise_exception_refuses_the_messages():
    source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations start with a user') }}{% endif %}ok"
    assert render(source, [{"role": "user", "content": "Hi"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="Conversations start with a user"):
        render(source, [{"role": "assistant", "content": "Hi"}])


def test_a_template_that_does_not_compile():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render("{% for m in messages %}", [{"role": "user", "content": "Hi"}])


def test_helpers_templates_use():
    source = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m | tojson }}{% endfor %}"
        "|{{ strftime_now('%Y') | length }}|{{ add_generation_prompt }}"
    )
    out = render(source, [{"role": "user", "content": "<a & b>"}, {"role": "user", "content": "never"}])
    # Hugging Face's tojson: no HTML escaping, non-ASCII kept.
    assert out == json.dumps({"role": "user", "content": "<a & b>"}) + "|4|True"


def test_bos_and_eos_as_the_engine_reports_them():
    """The engine reads them from the loaded vocabulary; the front never opens the file."""
    model = Model(GGUF, gpu_device=None)
    try:
        info = model.info
    finally:
        model.close()
    reported = {"bos_token": info.bos_token, "eos_token": info.eos_token, "bos_id": info.bos_id}
    tokens = special_tokens_of(reported)
    assert tokens == SpecialTokens(bos="<|im_start|>", eos="<|im_end|>", bos_id=1)
    source = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    assert render(source, [{"role": "user", "content": "Hi"}], tokens) == "<|im_start|>Hi<|im_end|>"
    # A model without them: empty strings, no BOS id, no error.
    assert special_tokens_of({"bos_token": "", "eos_token": "", "bos_id": None}) == NO_SPECIAL_TOKENS
    assert special_tokens_of({}) == NO_SPECIAL_TOKENS


# -- the chat route's preparation, on a stand-in worker -------------------------------------


class StandInWorker:
    accepting = True

    def __init__(self, template: str | None) -> None:
        # The fake engine's model under this one's name, with the template and special tokens under test.
        self.model = msgspec.structs.replace(
            fake_engine.MODEL,
            name=MODEL,
            chat_template=template,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            bos_id=1,
        )
        self.model_path = GGUF

    def rejected(self) -> None:
        pass


def _request(body: dict) -> Request:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}, receive)


def test_a_model_without_a_template_is_400_for_chat():
    app = Starlette(routes=OPENAI_ROUTES)
    app.state.worker = StandInWorker(None)
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "chat_template_missing" and error["param"] == "messages"
    assert "chat template" in error["message"] and "/v1/completions" in error["message"]


def test_a_template_error_is_400():
    app = Starlette(routes=OPENAI_ROUTES)
    app.state.worker = StandInWorker("{{ raise_exception('no system messages') }}")
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "chat_template_error" and "no system messages" in r.json()["error"]["message"]


def test_chat_prompt_is_the_rendered_template():
    worker = StandInWorker(SMOLLM2)
    req, job_id, prompt, adjust = asyncio.run(
        _prepare(_request({"model": MODEL, "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}), worker, "chat")
    )
    assert prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert adjust is None  # plain tokenization, as /execute's
    assert job_id.startswith("chatcmpl-")


def test_a_bos_written_by_the_template_is_not_doubled():
    """As llama.cpp: when the template writes the BOS and the model adds its own, one stays."""
    worker = StandInWorker("{{ bos_token }}{{ messages[0]['content'] }}")
    _, _, prompt, adjust = asyncio.run(
        _prepare(_request({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}), worker, "chat")
    )
    assert prompt == "<|im_start|>Hi"
    assert adjust([1, 1, 9]) == [1, 9]
    assert adjust([1, 9]) == [1, 9]  # a model that adds none: the template's BOS stays
