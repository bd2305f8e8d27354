"""The engine process's settings: one record, sent once, as the channel's first frame.

Its fields are WorkerConfig's engine and shared settings (part "engine" or "both"), of
the same names and types, and two the front works out: `threads`, the most threads
llama.cpp may compute with (n_threads, or the cores this process may run on), and
`board_slots`, the size of the cancel board the engine inherits. The state dir is sent
as the front resolved it. The engine's command line holds only the descriptors it
inherits (channel, board, log).
"""

from __future__ import annotations

import typing
from pathlib import Path, PurePath
from typing import Any

import msgspec

from worker_orcd.config import WorkerConfig
from worker_orcd.settings.schema import declared

ENGINE_FIELDS = tuple(field.name for field in declared(WorkerConfig) if field.in_engine)
_TYPES = typing.get_type_hints(WorkerConfig)

EngineSettings = msgspec.defstruct(
    "EngineSettings",
    [*((name, _TYPES[name]) for name in ENGINE_FIELDS), ("threads", int), ("board_slots", int)],
    kw_only=True,
    frozen=True,
    forbid_unknown_fields=True,
    module=__name__,
)


def engine_settings(config: WorkerConfig, board_slots: int) -> Any:
    """The record an engine for `config` is started with (an EngineSettings)."""
    values = {name: getattr(config, name) for name in ENGINE_FIELDS}
    values["state_dir"] = config.state_path
    return EngineSettings(**values, threads=config.threads, board_slots=board_slots)


def encode(settings: Any) -> bytes:
    return msgspec.msgpack.encode(settings, enc_hook=_enc_path)


def decode(frame: bytes) -> Any:
    """The EngineSettings in `frame`; raises msgspec.ValidationError if it is not one."""
    return msgspec.msgpack.decode(frame, type=EngineSettings, dec_hook=_dec_path)


def _enc_path(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    raise NotImplementedError(f"cannot send a {type(value).__name__} to the engine")


def _dec_path(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot read a {kind} from {value!r}")
