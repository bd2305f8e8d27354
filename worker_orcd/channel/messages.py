"""Every message the front and the engine process say to each other, as frozen structs.

One tagged union (`Message`), encoded with msgpack (`channel.frames`); the tag is
the message's kind. A streamed token is no struct: it is the one message per
token, packed by hand (`frames.Token`).

Front → engine: `Tokenize`, `RunRequest`, `Exit`. A cancel is no message: the
front raises the job's word on the cancel board, which the engine reads.
Engine → front: `EngineReady` or `EngineFailed` (at start), `Tokens` (a
tokenize answer), `Started`, token frames, `Stopped` (the loop saw the raised
word), `Done` (the run's facts, sent after its context was freed).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import msgspec

from worker_orcd.errors import ErrorCode


class StopReason(str, Enum):
    """Why generation ended on its own (a cancel is no stop reason: it is `stopped_at`)."""

    EOS = "eos"
    MAX_TOKENS = "max_tokens"
    STOP = "stop"


class Sampling(msgspec.Struct, frozen=True):
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # no end of generation before this many tokens (OpenAI's `min_tokens`, `ignore_eos`)


class RunFacts(msgspec.Struct, frozen=True, array_like=True):
    """What the engine says about a run, after freeing its context; the front decides the
    job's outcome from it (`jobs.outcomes`)."""

    stop_reason: StopReason | None = None
    stopped_at: float | None = None  # perf_counter() when the raised word was seen
    freed_at: float | None = None  # perf_counter() when its context was freed
    error_code: ErrorCode | None = None
    error_message: str = ""
    tokens_out: int = 0
    prompt_ms: float = 0.0
    decode_ms: float = 0.0


class ModelInfo(msgspec.Struct, frozen=True, array_like=True):
    """The loaded model as the engine describes it."""

    name: str
    path: str
    size_bytes: int
    quant_kind: str
    tokenizer_kind: str
    vocab_size: int
    n_ctx_train: int
    backend: str  # what runs it: "cpu", or the GPU's backend ("cuda", "metal", "vulkan", …)
    gpu_layers: int
    chat_template: str | None = None  # the GGUF's `tokenizer.chat_template` (Jinja2), if it has one
    bos_token: str | None = None  # the BOS and EOS tokens' text, for templates that write them ("" if none)
    eos_token: str | None = None
    bos_id: int | None = None


class PrefillChunk(msgspec.Struct, frozen=True, array_like=True):
    """The prompt chunk the engine evaluates at a time, and how it was chosen."""

    tokens: int
    mode: str  # auto | fixed
    budget_ms: float | None = None
    stop_points: str | None = None  # graph nodes (the CPU) | chunks (a GPU): what was timed
    measured_ms: dict[str, float] | None = None


# -- the messages -------------------------------------------------------------------------


class _Message(msgspec.Struct, frozen=True, array_like=True, tag_field="kind"):
    pass


class Tokenize(_Message, frozen=True, tag="tokenize"):
    request: int
    texts: list[tuple[str, bool]]  # (text, add_special)


class RunRequest(_Message, frozen=True, tag="run"):
    run: int
    job_id: str
    prompt_tokens: list[int]
    sampling: Sampling
    slot: int  # the run's word on the cancel board


class Exit(_Message, frozen=True, tag="exit"):
    """Finish the run in hand, free the model, end."""


class EngineReady(_Message, frozen=True, tag="ready"):
    pid: int
    model: ModelInfo
    prefill_chunk: PrefillChunk
    flash_attn: str
    # The engine's parts as /health shows them.
    gpu: dict[str, Any] | None = None
    spare_context: dict[str, Any] | None = None
    cpu_extra_buffers: dict[str, Any] | None = None
    threads: dict[str, Any] | None = None
    context_make_ms: float | None = None
    nice: int = 0
    slots: dict[str, Any] | None = None  # the batch's context, with --parallel N > 1


class EngineFailed(_Message, frozen=True, tag="failed"):
    message: str  # the one-line reason it could not start


class Tokens(_Message, frozen=True, tag="tokens"):
    request: int
    tokens: list[list[int]]


class Started(_Message, frozen=True, tag="started"):
    run: int


class Stopped(_Message, frozen=True, tag="stopped"):
    run: int
    at: float  # perf_counter() when the raised word was seen


class Done(_Message, frozen=True, tag="done"):
    run: int
    facts: RunFacts
    threads: dict[str, Any] | None = None  # the engine's thread choice after the run
    kv_cells: int | None = None  # cells of the batch's KV cache still in use once the run's are gone


FrontMessage = Tokenize | RunRequest | Exit
EngineMessage = EngineReady | EngineFailed | Tokens | Started | Stopped | Done
Message = FrontMessage | EngineMessage
