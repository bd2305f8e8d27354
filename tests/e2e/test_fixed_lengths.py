"""`ignore_eos` and `min_tokens` on the OpenAI routes (WO-OAI-12), through the real `openai` client.

Load generators send them (as vLLM's and llama.cpp's extensions) to make every answer the
same length. "Say hi." ends greedily with the model's end of text well before 64 tokens,
so each test first shows that, then what the parameter changes.
"""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.usefixtures("worker_idle")

HI = [{"role": "user", "content": "Say hi."}]
MAX = 64


@pytest.fixture(scope="module")
def api(worker) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(worker) -> str:
    with worker.client() as c:
        return c.get("/health").json()["model"]


@pytest.fixture(scope="module")
def natural(api, model) -> int:
    """How many tokens the greedy answer has when the end of text may stop it."""
    answer = api.chat.completions.create(model=model, messages=HI, temperature=0, max_tokens=MAX)
    assert answer.choices[0].finish_reason == "stop", "the prompt must end on its own for these tests"
    assert answer.usage is not None and answer.usage.completion_tokens < MAX // 2
    return answer.usage.completion_tokens


def test_ignore_eos_makes_max_tokens(api, model, natural):
    answer = api.chat.completions.create(
        model=model, messages=HI, temperature=0, max_tokens=MAX, extra_body={"ignore_eos": True}
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == MAX > natural


def test_ignore_eos_streamed_on_completions(api, model, natural):
    chunks = list(
        api.completions.create(
            model=model,
            prompt="Hi.",
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 24
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_min_tokens_holds_the_end_back(api, model, natural):
    least = natural + 10
    answer = api.chat.completions.create(
        model=model, messages=HI, temperature=0, max_tokens=MAX, extra_body={"min_tokens": least}
    )
    assert answer.usage is not None and answer.usage.completion_tokens >= least


def test_min_tokens_above_max_tokens_is_refused(api, model):
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model=model, messages=HI, max_tokens=8, extra_body={"min_tokens": 9})
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_value" and error["param"] == "min_tokens"


@pytest.mark.parametrize("bad", [-1, 2049, "3", 1.5, True])
def test_a_bad_min_tokens_is_named(api, model, bad):
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model=model, messages=HI, extra_body={"min_tokens": bad})
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "min_tokens"


def test_ignore_eos_must_be_a_boolean(api, model):
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model=model, messages=HI, extra_body={"ignore_eos": "yes"})
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "ignore_eos"
