"""The spec documents (specs/*.md) against themselves and the tests they cite.

Every requirement ID is defined once across the documents (its row's first cell), and
every test a requirement cites (`tests/...py`, `tests/...py::name`, `::name` for the
file cited before it on the same line; `Class::method`; `name[param]`) exists.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.md"))
DEFINITION = re.compile(r"^\|\s*(WO-[A-Z0-9]+(?:-[A-Z0-9]+)*)\s*\|")
# A backticked citation: a test file with optional ::names, or ::names alone (the file before it).
CITATION = re.compile(r"`(tests/[\w/]+\.py)?((?:::[\w\[\]\-.,=]+)*)`")


def definitions() -> list[tuple[str, str]]:
    return [
        (m.group(1), doc.name)
        for doc in SPECS
        for line in doc.read_text().splitlines()
        if (m := DEFINITION.match(line))
    ]


def citations() -> list[tuple[str, tuple[str, ...], str]]:
    """(test file, names, where) for every citation in the documents."""
    found = []
    for doc in SPECS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            current = None
            for m in CITATION.finditer(line):
                path, names = m.group(1), m.group(2)
                if path is None and not names:
                    continue
                current = path or current
                if current is None:
                    continue  # `::name` with no file before it on the line: not a test citation
                parts = tuple(re.sub(r"\[.*\]$", "", p) for p in names.split("::") if p)
                found.append((current, parts, f"{doc.name}:{n}"))
    return found


@cache
def defined(path: str) -> dict[str, set[str]]:
    """Top-level functions and classes of a test file; for a class, the names it defines."""
    tree = ast.parse((ROOT / path).read_text())
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            names[node.name] = {
                n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            }
    return names


def test_the_spec_documents_define_requirements():
    assert SPECS and definitions()


def test_every_requirement_id_is_defined_once():
    counts = Counter(rid for rid, _ in definitions())
    twice = {rid: [doc for r, doc in definitions() if r == rid] for rid, n in counts.items() if n > 1}
    assert not twice, twice


def test_every_cited_test_exists():
    missing = []
    for path, names, where in citations():
        if not (ROOT / path).is_file():
            missing.append(f"{where}: {path}")
            continue
        if not names:
            continue
        top = defined(path)
        head, *rest = names
        if head not in top or (rest and rest[0] not in top[head]):
            missing.append(f"{where}: {path}::{'::'.join(names)}")
    assert not missing, "\n".join(missing)
