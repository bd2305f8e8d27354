"""The model's own chat template (the GGUF's `tokenizer.chat_template`), rendered safely.

As llama.cpp's and llama-cpp-python's servers do: Jinja2 in an immutable
sandbox (a template cannot reach Python objects or change its inputs),
`trim_blocks` and `lstrip_blocks` as Hugging Face renders templates,
`raise_exception` and `strftime_now` for the templates that call them, and
`add_generation_prompt=True` so the prompt ends where the assistant's answer
starts. `bos_token` and `eos_token` are the model's token strings, read from
the GGUF file only for a template that names them.
"""

from __future__ import annotations

import functools
import json
import mmap
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from jinja2 import Template, TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(Exception):
    """The template cannot be compiled, or it refused the messages."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
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


# -- the BOS and EOS strings, from the GGUF header (the front never loads the model) -------------

_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_TOKENS_KEY = b"tokenizer.ggml.tokens"
_BOS_KEY = b"tokenizer.ggml.bos_token_id"
_EOS_KEY = b"tokenizer.ggml.eos_token_id"
_MAX_KEYS = 1 << 16


class _Reader:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> bytes:
        n = int(self.take("Q"))
        if self.pos + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def value(self, kind: int, keep_strings: bool = False) -> Any:
        if kind in _FIXED:
            return self.take(_FIXED[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = int(self.take("I")), int(self.take("Q"))
            if item in _FIXED:  # skipped unread: nothing here needs a number array
                self.pos += count * struct.calcsize("<" + _FIXED[item])
                return None
            values = [self.value(item) for _ in range(count)]
            return values if keep_strings else None
        raise ValueError(f"unknown GGUF value type {kind}")


@functools.lru_cache(maxsize=4)
def special_tokens(path: str) -> SpecialTokens:
    """The model's BOS and EOS token strings; empty strings where the file has none."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            reader = _Reader(buf)
            if buf[:4] != b"GGUF":
                return NO_SPECIAL_TOKENS
            reader.pos = 4
            if int(reader.take("I")) < 2:
                return NO_SPECIAL_TOKENS
            reader.take("Q")  # tensor count
            n_keys = int(reader.take("Q"))
            if n_keys > _MAX_KEYS:
                return NO_SPECIAL_TOKENS
            tokens: list[bytes] | None = None
            ids: dict[bytes, int] = {}
            for _ in range(n_keys):
                name = reader.string()
                value = reader.value(int(reader.take("I")), keep_strings=name == _TOKENS_KEY)
                if name == _TOKENS_KEY:
                    tokens = value
                elif name in (_BOS_KEY, _EOS_KEY) and isinstance(value, int):
                    ids[name] = value
    except (OSError, ValueError, struct.error, OverflowError):
        return NO_SPECIAL_TOKENS

    def text(key: bytes) -> str:
        i = ids.get(key)
        if tokens is None or i is None or not 0 <= i < len(tokens):
            return ""
        return tokens[i].decode("utf-8", "replace")

    bos_id = ids.get(_BOS_KEY)
    return SpecialTokens(bos=text(_BOS_KEY), eos=text(_EOS_KEY), bos_id=bos_id if text(_BOS_KEY) else None)


def special_tokens_for(source: str, model_path: Path) -> SpecialTokens:
    """What a template needs: the file is read only when the template names the tokens."""
    return special_tokens(str(model_path)) if uses_special_tokens(source) else NO_SPECIAL_TOKENS
