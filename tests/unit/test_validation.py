"""Request validation (WO-EXEC-2, WO-JOB-3, WO-CANCEL-2): every bad field named, nothing half-parsed."""

from __future__ import annotations

import json

import pytest

from worker_orcd.errors import ErrorCode
from worker_orcd.http.errors import RequestError
from worker_orcd.http.validation import (
    MAX_TOKENS_LIMIT,
    check_token_limits,
    parse_cancel,
    parse_execute,
    parse_json_object,
)

VALID = {"job_id": "job-1", "prompt": "Hello"}


def _problems(exc: pytest.ExceptionInfo[RequestError]) -> list[dict[str, str]]:
    err = exc.value
    assert err.code is ErrorCode.INVALID_REQUEST
    assert isinstance(err.details, list) and err.details
    for item in err.details:
        assert set(item) == {"field", "reason"} and item["reason"]
    return err.details


def _bad_fields(body: dict) -> list[str]:
    with pytest.raises(RequestError) as exc:
        parse_execute(body)
    problems = _problems(exc)
    # The message names the first problem.
    assert exc.value.message.startswith(problems[0]["field"])
    return [p["field"] for p in problems]


@pytest.mark.parametrize(
    "job_id",
    ["a", "A-z_0.9:x", "x" * 128, "0", "job:1.2_3-4", "..", "::"],
)
def test_job_id_rules_accept(job_id):
    assert parse_execute({**VALID, "job_id": job_id}).job_id == job_id
    assert parse_cancel({"job_id": job_id}) == job_id


@pytest.mark.parametrize(
    "job_id",
    ["", "x" * 129, "a b", "a/b", "é", "job\n", "a+b", "ü" * 3, "id#1", 5, 1.5, True, None, ["a"], {}],
)
def test_job_id_rules_reject(job_id):
    assert _bad_fields({**VALID, "job_id": job_id}) == ["job_id"]
    with pytest.raises(RequestError) as exc:
        parse_cancel({"job_id": job_id})
    assert [p["field"] for p in _problems(exc)] == ["job_id"]


def test_job_id_rules():
    # The boundary exactly: 128 characters of the allowed alphabet pass, one more fails.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
    assert parse_execute({**VALID, "job_id": alphabet}).job_id == alphabet
    assert parse_execute({**VALID, "job_id": "j" * 128}).job_id == "j" * 128
    assert _bad_fields({**VALID, "job_id": "j" * 129}) == ["job_id"]
    for ch in " /\\?#%&=+,;!@$*()[]{}<>\"'\t\u00e9\u4e2d":
        assert _bad_fields({**VALID, "job_id": f"a{ch}b"}) == ["job_id"], ch


def test_defaults():
    req = parse_execute(dict(VALID))
    assert req.max_tokens is None  # decided once the prompt is tokenized
    assert (req.temperature, req.top_p, req.top_k, req.repetition_penalty) == (1.0, 1.0, 0, 1.0)
    assert req.stop == ()
    assert req.seed_generated and 0 <= req.seed <= 2**64 - 1


def test_all_fields_at_their_bounds():
    for bounds in (
        {"max_tokens": 1, "temperature": 0.0, "top_p": 0.0, "top_k": 0, "repetition_penalty": 0.0, "seed": 0},
        {
            "max_tokens": 2048,
            "temperature": 2.0,
            "top_p": 1.0,
            "top_k": 49152,
            "repetition_penalty": 2.0,
            "seed": 2**64 - 1,
        },
    ):
        req = parse_execute({**VALID, **bounds, "stop": ["a", "b", "c", "d"]})
        assert req.max_tokens == bounds["max_tokens"] and req.seed == bounds["seed"]
        assert not req.seed_generated and req.stop == ("a", "b", "c", "d")
    # An integer is a number; the parsed value is a float.
    assert parse_execute({**VALID, "temperature": 1}).temperature == 1.0


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_tokens", 0),
        ("max_tokens", 2049),
        ("max_tokens", -1),
        ("max_tokens", 1.0),
        ("max_tokens", 1.5),
        ("max_tokens", "10"),
        ("max_tokens", True),
        ("temperature", -0.01),
        ("temperature", 2.01),
        ("temperature", "0.5"),
        ("temperature", True),
        ("temperature", False),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("top_p", -0.1),
        ("top_p", 1.01),
        ("top_p", True),
        ("top_p", float("-inf")),
        ("top_k", -1),
        ("top_k", 2**31),
        ("top_k", 0.5),
        ("top_k", False),
        ("repetition_penalty", -0.5),
        ("repetition_penalty", 2.5),
        ("repetition_penalty", True),
        ("repetition_penalty", [1.0]),
        ("seed", -1),
        ("seed", 2**64),
        ("seed", 1.0),
        ("seed", "1"),
        ("seed", True),
        ("prompt", ""),
        ("prompt", "x" * 32769),
        ("prompt", 5),
        ("prompt", ["Hello"]),
        ("prompt", None),
        ("stop", "stop"),
        ("stop", [""]),
        ("stop", [1]),
        ("stop", ["a", None]),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", {"a": 1}),
    ],
)
def test_bad_field(field, value):
    assert _bad_fields({**VALID, field: value}) == [field]


def test_prompt_length_limit_is_in_characters():
    # 32768 characters pass even when each is several UTF-8 bytes.
    assert parse_execute({**VALID, "prompt": "\u4e2d" * 32768}).prompt == "\u4e2d" * 32768


def test_a_prompt_with_a_lone_surrogate_is_refused_by_name():
    # JSON can carry "\\ud800", which no UTF-8 encoding of the prompt could (WO-EXEC-2).
    body = parse_json_object(b'{"job_id": "job-1", "prompt": "a\\ud800b"}')
    assert _bad_fields(body) == ["prompt"]


def test_missing_and_unknown_fields():
    assert _bad_fields({}) == ["job_id", "prompt"]
    fields = _bad_fields({**VALID, "model": "x", "n": 2})
    assert set(fields) == {"model", "n"}


def test_every_bad_field_is_listed():
    body = {
        "job_id": "bad id",
        "prompt": "",
        "max_tokens": 0,
        "temperature": True,
        "top_p": 3,
        "top_k": -1,
        "repetition_penalty": float("nan"),
        "stop": "x",
        "seed": -1,
        "extra": 1,
    }
    assert set(_bad_fields(body)) == set(body)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"{",
        b'{"job_id": "a",}',
        b"\xff\xfe{}",
        b'{"temperature": NaN}',
        b'{"temperature": Infinity}',
        b'{"temperature": -Infinity}',
    ],
)
def test_not_json(raw):
    with pytest.raises(RequestError) as exc:
        parse_json_object(raw)
    assert _problems(exc)[0]["field"] == ""


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"1", b"null", b"true", b'[{"job_id": "a"}]'])
def test_not_an_object(raw):
    with pytest.raises(RequestError) as exc:
        parse_json_object(raw)
    assert "object" in exc.value.message


def test_huge_exponent_is_not_finite():
    # Python reads 1e400 as inf: it must still be refused as a non-finite number.
    body = parse_json_object(b'{"job_id": "a", "prompt": "b", "temperature": 1e400}')
    assert _bad_fields(body) == ["temperature"]


def test_nested_too_deep_is_an_invalid_request():
    with pytest.raises(RequestError) as exc:
        parse_json_object(b"[" * 100_000 + b"]" * 100_000)
    assert exc.value.code is ErrorCode.INVALID_REQUEST


def test_valid_json_object_roundtrip():
    body = {"job_id": "a", "prompt": "\u4f60\u597d \U0001f600", "stop": ["\n"]}
    assert parse_json_object(json.dumps(body).encode()) == body


# -- limits that need the tokenizer --------------------------------------------------------


def _limits(prompt_tokens: int, stop_tokens=(), *, n_ctx: int = 4096, vocab: int = 49152, **fields):
    req = parse_execute({**VALID, **fields})
    return check_token_limits(req, prompt_tokens, list(stop_tokens), n_ctx=n_ctx, vocab_size=vocab)


def test_default_max_tokens_fits_the_context():
    assert _limits(10) == MAX_TOKENS_LIMIT
    assert _limits(4000) == 96
    assert _limits(4095) == 1
    assert _limits(10, n_ctx=512) == 502


def test_explicit_max_tokens_kept_when_it_fits():
    assert _limits(4000, max_tokens=96) == 96


def _limit_fields(prompt_tokens: int, stop_tokens=(), **kwargs) -> list[str]:
    with pytest.raises(RequestError) as exc:
        _limits(prompt_tokens, stop_tokens, **kwargs)
    return [p["field"] for p in _problems(exc)]


def test_prompt_too_long_for_the_context():
    assert _limit_fields(4096) == ["prompt"]
    assert _limit_fields(10_000) == ["prompt"]


def test_prompt_with_no_tokens():
    assert "prompt" in _limit_fields(0)


def test_max_tokens_beyond_the_context():
    assert _limit_fields(4000, max_tokens=97) == ["max_tokens"]


def test_top_k_beyond_the_vocabulary():
    assert _limit_fields(5, top_k=49153) == ["top_k"]
    assert _limits(5, top_k=49152) == MAX_TOKENS_LIMIT


def test_stop_strings_too_many_tokens():
    assert _limits(5, [32, 1], stop=["a", "b"]) == MAX_TOKENS_LIMIT
    assert _limit_fields(5, [1, 33], stop=["a", "b"]) == ["stop[1]"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"job_id": ""},
        {"job_id": "bad id"},
        {"job_id": 5},
        {"job_id": None},
        {"job_id": "ok", "reason": "x"},
        {"id": "ok"},
    ],
)
def test_bad_cancel_bodies(body):
    with pytest.raises(RequestError) as exc:
        parse_cancel(body)
    _problems(exc)
