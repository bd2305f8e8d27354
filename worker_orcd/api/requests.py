"""What clients send the worker: the request bodies and query parameters, as models.

One declaration per body gives both its validation and its part of the OpenAPI
document (`worker_orcd.api.openapi`). Every model is strict: a field it does not
declare is an error, a bool is not a number, a string is never read as a number,
and NaN and the infinities are refused. `null` for an optional field means its
default. The routes turn pydantic's errors into the worker's own answers
(`worker_orcd.http.validation`, `worker_orcd.http.openai.params`); the checks
pydantic has no words for raise a `PydanticCustomError` whose type is the
OpenAI error code and whose message is the answer's, `{param}` standing for
where it was found.

A validated body makes the engine's `Sampling` itself (`sampling`), once the
route knows how many tokens the job may make.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from worker_orcd.api.fields import JobId, JobState
from worker_orcd.channel.messages import Sampling

MAX_PROMPT_CHARS = 32768
MAX_TOKENS_LIMIT = 2048
MAX_STOP_STRINGS = 4
MAX_STOP_TOKENS = 32
TOP_K_MAX = 2**31 - 1  # the vocabulary bound is checked with the model
SEED_MAX = 2**64 - 1
SEED_MIN = -(2**63)  # OpenAI's seed is a signed 64-bit integer
# OpenAI's default for the legacy completions endpoint; chat's is "as many as fit".
COMPLETION_DEFAULT_MAX_TOKENS = 16
ROLES = ("system", "developer", "user", "assistant")
MAX_USER_CHARS = 256
# More than ever fit a prompt of MAX_PROMPT_CHARS through a chat template; bounds the
# validation and the template's rendering of a body of many tiny messages (WO-LIMIT-6).
MAX_MESSAGES = 1024
LIST_LIMIT_MAX = 1000
LIST_LIMIT_DEFAULT = 50
MAX_DECIMAL_DIGITS = 18  # more is past every count the worker takes, and int() of it costs

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

MaxTokens = Annotated[int | None, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=0, le=TOP_K_MAX)]
RepetitionPenalty = Annotated[float, Field(ge=0.0, le=2.0)]
StopString = Annotated[str, Strict(), Field(min_length=1)]


def reject(code: str, message: str) -> PydanticCustomError:
    """A check pydantic has no words for: `code` is OpenAI's, `{param}` where it was found."""
    return PydanticCustomError(code, message)


def type_name(value: Any) -> str:
    """A JSON value's kind, in the words of OpenAI's errors."""
    if value is None:
        return "null"
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def wrong_type(expected: str, value: Any) -> PydanticCustomError:
    return reject(
        "invalid_type", f"Invalid type for '{{param}}': expected {expected}, but got {type_name(value)} instead."
    )


class SamplingFields(Protocol):
    """Read-only, so that each body may declare its fields in its own (narrower) types."""

    @property
    def max_tokens(self) -> int | None: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def top_k(self) -> int: ...
    @property
    def repetition_penalty(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def stop(self) -> tuple[str, ...]: ...


class SampledRequest(SamplingFields, Protocol):
    """What a route hands `accept`: a validated body that makes the engine's settings."""

    def sampling(self, max_tokens: int) -> Sampling: ...
    def least_tokens(self, max_tokens: int) -> int: ...


class _Body(BaseModel):
    model_config = STRICT
    # Fields whose `null` is a wrong type rather than "absent".
    null_is_a_value: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            keep, fields = cls.null_is_a_value, cls.model_fields
            return {k: v for k, v in data.items() if v is not None or k in keep or k not in fields}
        return data


# Every setting but max_tokens (known once the prompt is tokenized) is the body's field of that name.
_SAMPLED = tuple(name for name in Sampling.__struct_fields__ if name not in ("max_tokens", "min_tokens"))


class _Sampled:
    def sampling(self: SampledRequest, max_tokens: int) -> Sampling:
        """The engine's settings for this request, given the tokens the job may make."""
        fields = {name: getattr(self, name) for name in _SAMPLED}
        return Sampling(max_tokens=max_tokens, min_tokens=self.least_tokens(max_tokens), **fields)

    def least_tokens(self, max_tokens: int) -> int:
        """How many tokens the job makes before an end of generation may stop it."""
        return 0


def _random_seed() -> int:
    return secrets.randbits(64)


# -- the worker's own API -----------------------------------------------------------------


class ExecuteRequest(_Sampled, _Body):
    """Only these fields (WO-EXEC-2). A boolean is not a number; `null` for an optional field means its default."""

    null_is_a_value = frozenset({"job_id", "prompt"})

    job_id: JobId
    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="Tokenized as given, with the model's BOS when it wants one; special tokens written in it are "
        "honoured; no template is applied (WO-EXEC-4). It must have at least one token and fit the context.",
    )
    max_tokens: MaxTokens = Field(
        None, description="Prompt tokens + max_tokens ≤ `--n-ctx`. Default: min(2048, n_ctx − prompt tokens)."
    )
    temperature: Temperature = Field(1.0, description="0.0 is greedy.")
    top_p: TopP = Field(1.0, description="1.0 is off.")
    top_k: TopK = Field(
        0, description="0 is off; at most the model's vocabulary size (`vocab_size` in /health), else 400."
    )
    repetition_penalty: RepetitionPenalty = Field(1.0, description="1.0 is off, and so is 0.0.")
    seed: int = Field(
        default_factory=_random_seed,
        ge=0,
        le=SEED_MAX,
        description="Default: generated, reported in `started`. Same model, prompt, seed and settings give the same "
        "tokens; the sampler gets seed mod (2^32 − 1) (WO-EXEC-5).",
    )
    stop: tuple[StopString, ...] = Field(
        (),
        strict=False,  # a JSON array; its items stay strict
        max_length=MAX_STOP_STRINGS,
        description='Generation ends with `stop_reason: "stop"` at the first of these; the stop string is not sent '
        "(WO-EXEC-6). Each at most 32 tokens.",
    )

    @property
    def seed_generated(self) -> bool:
        return "seed" not in self.model_fields_set


class CancelRequest(_Body):
    null_is_a_value = frozenset({"job_id"})

    job_id: JobId


def plain_decimal(text: str | bytes) -> int | None:
    """A count written in ASCII digits; None for anything else.

    `str.isdigit()` is true for "²" and "١", which `int()` refuses or reads as a
    digit no client meant. A longer run of digits than any limit allows reads as
    the first number past them all.
    """
    if not text or not text.isascii() or not text.isdigit():
        return None
    significant = text.lstrip(b"0") if isinstance(text, bytes) else text.lstrip("0")
    if len(significant) > MAX_DECIMAL_DIGITS:
        return 10**MAX_DECIMAL_DIGITS
    return int(significant or "0")


def _count(value: Any) -> Any:
    """A query's count is text: its ASCII digits are the integer, anything else stays a wrong type."""
    if isinstance(value, str):
        number = plain_decimal(value)
        return value if number is None else number
    return value


class JobsQuery(_Body):
    """The query of GET /jobs."""

    state: JobState | None = Field(None, description="Only jobs in this state.")
    limit: Annotated[int, Field(ge=1, le=LIST_LIMIT_MAX), BeforeValidator(_count)] = LIST_LIMIT_DEFAULT


# -- the OpenAI-compatible API ------------------------------------------------------------


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise reject("invalid_value", "'{param}' is not valid Unicode text (a lone surrogate).") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


def _stop(value: Any) -> Any:
    """OpenAI's `stop`: a string, or an array of at most four, none empty."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise wrong_type("a string or an array of strings", value)
    if len(items) > MAX_STOP_STRINGS:
        raise reject("invalid_value", f"'stop' holds at most {MAX_STOP_STRINGS} strings.")
    for item in items:
        if not isinstance(item, str):
            raise wrong_type("a string", item)
        if not item:
            raise reject("invalid_value", "'{param}' must not be empty.")
        _unicode(item)
    return tuple(items)


OpenAIStop = TypeAliasType(
    "OpenAIStop",
    Annotated[
        StopString | Annotated[tuple[StopString, ...], Field(max_length=MAX_STOP_STRINGS)],
        Field(
            description="Generation ends at the first of these (each at most 32 tokens), which is not sent "
            "(WO-EXEC-6); `finish_reason` is then `stop`."
        ),
    ],
)


def _only(harmless: Callable[[Any], bool], why: str, code: str) -> Callable[[Any], Any]:
    """A parameter the worker cannot honour: accepted only at its harmless value."""

    def check(value: Any) -> Any:
        if not harmless(value):
            raise reject(code, "'{param}' " + why + " is not supported by this worker.")
        return value

    return check


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: any(type(v) is type(a) and v == a for a in allowed)


def _zero(v: Any) -> bool:
    return type(v) in (int, float) and v == 0


def _never(v: Any) -> bool:
    return False


def _default_only(harmless: Callable[[Any], bool], why: str, code: str, schema: dict[str, Any]) -> Any:
    return Annotated[Any, BeforeValidator(_only(harmless, why, code)), Field(json_schema_extra=schema)]


_TOKEN_FREE = "(log probabilities)"
N = _default_only(_one_of(1), "other than 1 (one choice per request)", "unsupported_value",
                  {"enum": [1, None], "description": "One choice per request."})  # fmt: skip
PresencePenalty = _default_only(_zero, "other than 0", "unsupported_value",
                                {"enum": [0, None], "description": "Not supported other than 0."})  # fmt: skip
LogitBias = _default_only(_one_of({}), "(token biases)", "unsupported_parameter",
                          {"type": ["object", "null"], "maxProperties": 0,
                           "description": "Token biases are not supported."})  # fmt: skip


class OpenAIStreamOptions(_Body):
    """Only with `stream: true` (else 400). `include_usage`: every chunk has `usage: null` and one more chunk, with
    empty `choices`, has the usage."""

    include_usage: bool = False


class _OpenAIBody(_Sampled, _Body):
    # The order today's answers check parameters in: the first bad one is the one named.
    check_order: ClassVar[tuple[str, ...]]
    required: ClassVar[tuple[str, ...]]

    model: Text
    max_tokens: MaxTokens = Field(
        None,
        description="Default: what fits the context, at most 2048 (as `/execute`). Prompt tokens + max_tokens ≤ "
        "`--n-ctx`.",
    )
    temperature: Temperature = Field(1.0, description="0 is greedy.")
    top_p: TopP = Field(1.0, description="1 is off.")
    top_k: TopK = Field(0, description="Worker extension, as in `/execute`: 0 is off; at most the vocabulary size.")
    repetition_penalty: RepetitionPenalty = Field(
        1.0, description="Worker extension, as in `/execute`: 1 (and 0) is off."
    )
    stop: Annotated[OpenAIStop, BeforeValidator(_stop)] = ()
    seed: int = Field(
        default_factory=_random_seed,
        ge=SEED_MIN,
        le=SEED_MAX,
        description="A negative seed is taken modulo 2^64. Default: generated.",
    )
    n: N = None
    presence_penalty: PresencePenalty = None
    frequency_penalty: PresencePenalty = None
    logit_bias: LogitBias = None
    min_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS_LIMIT)] = Field(
        0,
        description="vLLM's and llama.cpp's extension: no end of generation (the model's end-of-text tokens) "
        "before this many tokens; stop strings still stop. At most `max_tokens` (WO-OAI-12).",
    )
    ignore_eos: bool = Field(
        False,
        description="vLLM's and llama.cpp's extension, as load generators send it for fixed output lengths: the "
        "model's end-of-text tokens are never sampled, so the job makes `max_tokens` tokens unless a stop "
        "string ends it (WO-OAI-12).",
    )
    stream: bool = Field(False, description="Stream chunks as Server-Sent Events (WO-OAI-6).")
    stream_options: OpenAIStreamOptions | None = None
    user: Annotated[Text, Field(max_length=MAX_USER_CHARS)] | None = Field(
        None, description="Recorded in the `job_queued` log line."
    )

    @field_validator("seed")
    @classmethod
    def _unsigned(cls, seed: int) -> int:
        return seed % 2**64  # the engine's seed is unsigned

    @field_validator("min_tokens")
    @classmethod
    def _at_most_max(cls, value: int, info: ValidationInfo) -> int:
        given = info.data.get("max_tokens")
        if given is not None and value > given:
            raise reject("invalid_value", "'min_tokens' must be at most 'max_tokens'.")
        return value

    def least_tokens(self, max_tokens: int) -> int:
        return max_tokens if self.ignore_eos else min(self.min_tokens, max_tokens)

    @field_validator("stream_options", mode="before")
    @classmethod
    def _only_streamed(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, dict) and info.data.get("stream") is not True:
            raise reject("invalid_value", "'stream_options' is only allowed when 'stream' is true.")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


_CHECKED_FIRST = ("user", "seed", "stream", "stream_options", "model", "temperature", "top_p", "top_k",
                  "repetition_penalty", "stop", "ignore_eos")  # fmt: skip


def _role(value: Any) -> Any:
    if value in ROLES:
        return value
    if value in ("tool", "function"):
        raise reject("unsupported_value", f"'{{param}}' {value!r} (tool calling) is not supported by this worker.")
    raise reject("invalid_value", f"Invalid '{{param}}': must be one of {', '.join(ROLES)}.")


def _part_type(value: Any) -> Any:
    if value != "text":
        what = f"{value!r}" if isinstance(value, str) else "other than 'text'"
        raise reject("unsupported_value", "'{param}' " + what + " is not supported by this worker.")
    return value


class OpenAITextPart(_Body):
    type: Annotated[Literal["text"], BeforeValidator(_part_type)]
    text: Text


def _content_kind(value: Any) -> str | None:
    return "<text>" if isinstance(value, str) else "<parts>" if isinstance(value, list) else None


Content = Annotated[
    Annotated[Text, Tag("<text>")] | Annotated[list[OpenAITextPart], Tag("<parts>")],
    Discriminator(
        _content_kind, custom_error_type="content_type", custom_error_message="a string or an array of content parts"
    ),
    Field(description="Text, or text parts (joined with newlines)."),
]


class OpenAIMessage(_Body):
    role: Annotated[Literal["system", "developer", "user", "assistant"], BeforeValidator(_role)] = Field(
        description="`developer` is given to the template as `system`; `tool` and `function` are not supported."
    )
    content: Content
    name: Text | None = None
    refusal: Annotated[None, BeforeValidator(_only(_never, "(refusals)", "unsupported_parameter"))] = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class OpenAIChatRequest(_OpenAIBody):
    """OpenAI's chat completion request, the parameters the worker honours (WO-OAI-3). An unknown parameter is a 400
    `unknown_parameter`; one the worker cannot honour is accepted only at its harmless value (the `enum`s below) and
    is otherwise a 400 `unsupported_parameter` or `unsupported_value`; `null` means absent."""

    model: Text = Field(
        description="The loaded model: `model` of /health, or its file stem (WO-OAI-2); another name is a 404 "
        "`model_not_found`."
    )
    messages: list[OpenAIMessage] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="Made into the prompt by the model's own chat template from its GGUF file (WO-OAI-4).",
    )
    max_completion_tokens: MaxTokens = Field(
        None, description="The same as `max_tokens`; when both are given they must agree."
    )
    logprobs: _default_only(_one_of(False), _TOKEN_FREE, "unsupported_value",
                            {"enum": [False, None], "description": "Log probabilities are not supported."}) = None  # fmt: skip
    top_logprobs: _default_only(_one_of(0), _TOKEN_FREE, "unsupported_parameter",
                                {"enum": [0, None], "description": "Log probabilities are not supported."}) = None  # fmt: skip
    response_format: _default_only(
        _one_of({"type": "text"}), 'other than {"type": "text"}', "unsupported_value",
        {"oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": False, "required": ["type"],
                                      "properties": {"type": {"const": "text"}}}]},
    ) = None  # fmt: skip
    tools: _default_only(_one_of([]), "(tool calling)", "unsupported_parameter",
                         {"type": ["array", "null"], "maxItems": 0,
                          "description": "Tool calling is not supported."}) = None  # fmt: skip
    tool_choice: _default_only(_one_of("none", "auto"), 'other than "none" (tool calling)', "unsupported_value",
                               {"enum": ["none", "auto", None],
                                "description": "Without tools, `auto` is `none`."}) = None  # fmt: skip
    # Without tools there are no tool calls to run in parallel or not.
    parallel_tool_calls: _default_only(_one_of(True, False), "(tool calling)", "unsupported_value",
                                       {"type": ["boolean", "null"],
                                        "description": "Without tools, it changes nothing."}) = None  # fmt: skip
    functions: _default_only(_one_of([]), "(function calling)", "unsupported_parameter",
                             {"type": ["array", "null"], "maxItems": 0}) = None  # fmt: skip
    function_call: _default_only(_one_of("none", "auto"), 'other than "none" (function calling)', "unsupported_value",
                                 {"enum": ["none", "auto", None],
                                  "description": "Without functions, `auto` is `none`."}) = None  # fmt: skip
    store: _default_only(_one_of(False), "(stored completions)", "unsupported_value",
                         {"enum": [False, None], "description": "Completions are not stored (the ledger keeps the "
                                                                "job: `GET /jobs/{id}`)."}) = None  # fmt: skip
    metadata: _default_only(_one_of({}), "(stored completions)", "unsupported_parameter",
                            {"type": ["object", "null"], "maxProperties": 0}) = None  # fmt: skip
    service_tier: _default_only(_one_of("auto", "default"), 'other than "auto" or "default"', "unsupported_value",
                                {"enum": ["auto", "default", None], "description": "One tier."}) = None  # fmt: skip
    modalities: _default_only(_one_of(["text"]), 'other than ["text"]', "unsupported_value",
                              {"oneOf": [{"type": "null"}, {"const": ["text"]}]}) = None  # fmt: skip
    audio: _default_only(_never, "(audio output)", "unsupported_parameter", {"type": "null"}) = None
    prediction: _default_only(_never, "(predicted outputs)", "unsupported_parameter", {"type": "null"}) = None
    reasoning_effort: _default_only(_never, "(reasoning)", "unsupported_parameter", {"type": "null"}) = None
    web_search_options: _default_only(_never, "(web search)", "unsupported_parameter", {"type": "null"}) = None

    required = ("model", "messages")
    check_order = (
        "n", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
        "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
        "store", "metadata", "service_tier", "modalities", "audio", "prediction", "reasoning_effort",
        "web_search_options", *_CHECKED_FIRST, "messages", "max_tokens", "max_completion_tokens", "min_tokens",
    )  # fmt: skip

    @field_validator("max_completion_tokens")
    @classmethod
    def _agrees(cls, value: int | None, info: ValidationInfo) -> int | None:
        given = info.data.get("max_tokens")
        if value is not None and given is not None and value != given:
            raise reject("invalid_value", "'max_tokens' and 'max_completion_tokens' differ; send one of them.")
        return value

    @model_validator(mode="after")
    def _one_max_tokens(self) -> OpenAIChatRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    @property
    def template_messages(self) -> tuple[dict[str, str], ...]:
        """The messages as the chat template takes them: role, content (and name when given)."""
        out = []
        for message in self.messages:
            # `developer` is OpenAI's newer name for `system`; chat templates know `system`.
            entry = {"role": "system" if message.role == "developer" else message.role, "content": message.text}
            if message.name is not None:
                entry["name"] = message.name
            out.append(entry)
        return tuple(out)


def _one_prompt(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], str):
            raise reject(
                "unsupported_value",
                "'prompt' is one string (or an array of exactly one string); token arrays and "
                "several prompts are not supported by this worker.",
            )
        return value[0]
    return value


_PROMPT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}


class OpenAICompletionRequest(_OpenAIBody):
    """OpenAI's (legacy) completion request, the parameters the worker honours (WO-OAI-3); the rules of
    `OpenAIChatRequest` apply."""

    model: Text = Field(description="As for chat (WO-OAI-2).")
    prompt: Annotated[
        Text,
        BeforeValidator(_one_prompt),
        WithJsonSchema(
            {
                "oneOf": [_PROMPT_SCHEMA, {"type": "array", "minItems": 1, "maxItems": 1, "items": _PROMPT_SCHEMA}],
                "description": "Tokenized as `/execute` tokenizes its prompt, no template (WO-EXEC-4). One string, "
                "or an array of exactly one.",
            }
        ),
    ] = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: MaxTokens = Field(COMPLETION_DEFAULT_MAX_TOKENS, description="Default: 16, as OpenAI's.")
    top_k: TopK = Field(0, description="Worker extension, as in `/execute`.")
    repetition_penalty: RepetitionPenalty = Field(1.0, description="Worker extension, as in `/execute`.")
    best_of: _default_only(_one_of(1), "other than 1", "unsupported_value",
                           {"enum": [1, None], "description": "One candidate."}) = None  # fmt: skip
    echo: _default_only(_one_of(False), "(echoing the prompt)", "unsupported_value",
                        {"enum": [False, None], "description": "The prompt is not echoed."}) = None  # fmt: skip
    # The legacy endpoint's `logprobs` is a count (null: none), not a boolean.
    logprobs: _default_only(_never, _TOKEN_FREE, "unsupported_parameter", {"type": "null"}) = None
    suffix: _default_only(_one_of(""), "(insertion)", "unsupported_parameter",
                          {"enum": ["", None], "description": "Insertion is not supported."}) = None  # fmt: skip

    required = ("model", "prompt")
    check_order = (
        "n", "presence_penalty", "frequency_penalty", "logit_bias", "echo", "best_of", "suffix",
        *_CHECKED_FIRST, "logprobs", "prompt", "max_tokens", "min_tokens",
    )  # fmt: skip

    template_messages: ClassVar[tuple[dict[str, str], ...]] = ()  # no template: the prompt is as given
