"""A GGUF file looked at without loading it: is it one, and one metadata value.

Used where loading the model would be the very thing to avoid: the front (which
never loads llama.cpp) failing fast on a bad --model, and deciding, before the
engine touches the file, whether a cached verdict about it still holds.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

FILE_TYPE_KEY = "general.file_type"
GGUF_MAGIC = b"GGUF"


class ModelLoadError(Exception):
    """The model file is missing, not a GGUF file, or llama.cpp refused it."""


def check_model_file(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelLoadError(f"model file cannot be read: {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"not a GGUF model file (bad magic {magic!r}): {path}")


# GGUF value types: fixed-size ones by their struct format; 8 is a string, 9 an array.
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_KEYS = 1 << 16  # a header claiming more is garbage, not a model


class _Header:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> int | float | bool:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> bytes:
        n = int(self.take("Q"))
        if self.pos + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def value(self, kind: int) -> object:
        if kind in _FIXED:
            return self.take(_FIXED[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = int(self.take("I")), int(self.take("Q"))
            if item in _FIXED:  # skip without reading: vocabularies are long
                self.pos += count * struct.calcsize("<" + _FIXED[item])
                if self.pos > len(self.buf):
                    raise ValueError("array runs past the end of the file")
                return None
            for _ in range(count):
                self.value(item)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")


def read_value(path: Path, key: str) -> object | None:
    """The value of `key` in the file's metadata; None if absent or the header is unreadable."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            header = _Header(buf)
            if buf[:4] != b"GGUF":
                return None
            header.pos = 4
            if int(header.take("I")) < 2:  # version 1 had 32-bit counts; nothing writes it any more
                return None
            header.take("Q")  # tensor count
            n_keys = int(header.take("Q"))
            if n_keys > _MAX_KEYS:
                return None
            wanted = key.encode()
            for _ in range(n_keys):
                name = header.string()
                value = header.value(int(header.take("I")))
                if name == wanted:
                    return value
    except (OSError, ValueError, struct.error, OverflowError, RecursionError):
        return None
    return None


def file_type(path: Path) -> int | None:
    """`general.file_type`: the quantisation the file was written with (a llama_ftype)."""
    value = read_value(path, FILE_TYPE_KEY)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
