"""The model's own chat template (the GGUF's `tokenizer.chat_template`), rendered safely.

As llama.cpp's and llama-cpp-python's servers do: Jinja2 in an immutable
sandbox (a template cannot reach Python objects or change its inputs),
`trim_blocks` and `lstrip_blocks` as Hugging Face renders templates,
`raise_exception` and `strftime_now` for the templates that call them, and
`add_generation_prompt=True` so the prompt ends where the assistant's answer
starts. `bos_token` and `eos_token` are the model's token strings, as the
engine reports them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from anyio import CapacityLimiter, to_thread
from jinja2 import Template, TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(Exception):
    """The template cannot be compiled, or it refused the messages."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Hugging Face's: no HTML escaping (jinja2's own tojson escapes <, > and &).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=4)
def compile_template(source: str) -> Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from None


def uses_special_tokens(source: str) -> bool:
    return "bos_token" in source or "eos_token" in source


@dataclass(frozen=True, slots=True)
class SpecialTokens:
    bos: str = ""
    eos: str = ""
    bos_id: int | None = None


NO_SPECIAL_TOKENS = SpecialTokens()


def render(source: str, messages: Iterable[dict[str, str]], special: SpecialTokens = NO_SPECIAL_TOKENS) -> str:
    """The prompt for these messages, ending with the assistant's turn opened."""
    template = compile_template(source)
    try:
        return template.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=True,
            bos_token=special.bos,
            eos_token=special.eos,
        )
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template refused the messages: {exc}") from None
    except Exception as exc:  # a template's own logic failing on these messages (a TypeError, …)
        raise ChatTemplateError(f"the model's chat template failed on the messages: {exc!r}") from None


# Threads of their own: renders waiting for a thread never hold up the other blocking
# calls the routes hand off, nor the other way round.
RENDER_THREADS = 4
_render_threads = CapacityLimiter(RENDER_THREADS)


async def render_off_loop(
    source: str, messages: Iterable[dict[str, str]], special: SpecialTokens = NO_SPECIAL_TOKENS
) -> str:
    """`render` on a thread: a slow template never stalls the event loop's other requests."""
    return await to_thread.run_sync(render, source, messages, special, limiter=_render_threads)


def special_tokens_of(model: dict[str, Any]) -> SpecialTokens:
    """The BOS and EOS strings of the loaded model, as the engine reported them."""
    bos = model.get("bos_token") or ""
    return SpecialTokens(bos=bos, eos=model.get("eos_token") or "", bos_id=model.get("bos_id") if bos else None)
