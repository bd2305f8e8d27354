"""How a setting is declared: a field of `WorkerConfig` whose metadata says its flag.

Each field is declared once, with its type and default (the dataclass's), and a
`Flag`: the option's name, help, how its text is read, and which part of the worker
uses it (the front, the engine process, or both). The `serve` parser and the engine's
settings record are derived from these declarations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, Literal

Part = Literal["front", "engine", "both"]
SWITCH = ("auto", "on", "off")  # a feature the worker turns on by itself, or as told

_FLAG = "flag"


@dataclass(frozen=True)
class Flag:
    """One `worker-orcd serve` option."""

    name: str  # --n-ctx
    help: str | None = None
    parse: Callable[[str], Any] | None = None  # argparse's `type`: its name is in argparse's errors
    choices: Sequence[str] | None = None
    metavar: str | None = None  # None: the name's, as argparse would make it (--n-ctx N_CTX)
    repeat: bool = False  # given as often as wanted; the field holds every value, in order
    part: Part = "front"
    per_replica: bool = False  # under Ray Serve each replica sets it itself (its port, its device, …)

    @property
    def shown_as(self) -> str | None:
        """The value's placeholder in usage lines (argparse derives it from the option's name,
        not from the field's, which may differ: --threads fills n_threads)."""
        if self.metavar is not None or self.choices is not None:
            return self.metavar
        return self.name.lstrip("-").replace("-", "_").upper()


def setting(
    name: str,
    default: Any = MISSING,
    parse: Callable[[str], Any] | None = None,
    help: str | None = None,
    *,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    repeat: bool = False,
    part: Part = "front",
    per_replica: bool = False,
) -> Any:
    """A WorkerConfig field given by the flag `name` (no default: one `serve` works out)."""
    flag = Flag(
        name,
        help=help,
        parse=parse,
        choices=choices,
        metavar=metavar,
        repeat=repeat,
        part=part,
        per_replica=per_replica,
    )
    return dataclasses.field(default=default, metadata={_FLAG: flag})


@dataclass(frozen=True)
class Declared:
    """A field as declared: its name, its flag, and its default (MISSING: none)."""

    name: str
    flag: Flag
    default: Any

    @property
    def in_engine(self) -> bool:
        return self.flag.part in ("engine", "both")


def declared(cls: type) -> tuple[Declared, ...]:
    """The fields of `cls` that are settings, in their order (the usage line's)."""
    return tuple(Declared(f.name, f.metadata[_FLAG], f.default) for f in dataclasses.fields(cls) if _FLAG in f.metadata)
