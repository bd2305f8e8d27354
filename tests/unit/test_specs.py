"""The spec documents (specs/*.md) against themselves and the tests they cite.

Every requirement ID is defined once across the documents (a table row's first cell, or
a line that opens with the bold ID and a dash: `**WO-X-1** — ...`), every ID they name is
defined, and every test a requirement cites (`tests/...py`, `tests/...py::name`, `::name`
for the file cited before it on the same line; `Class::method`; `name[param]`) exists.

They stay readable: each has a table of contents (a `## Contents` list) whose links are
its own headings and that lists every `##` heading; every link between them leads to a
heading of the document it names; no table cell is longer than 400 characters.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.md"))
REQUIREMENT_ID = r"WO-[A-Z0-9]+(?:-[A-Z0-9]+)*"
# A table row whose first cell is the ID, or an entry that opens with the bold ID.
DEFINITION = re.compile(rf"^(?:\|\s*({REQUIREMENT_ID})\s*\||\*\*({REQUIREMENT_ID})\*\* —)")
# An ID named anywhere (`WO-AUTH-3..5` names WO-AUTH-3); `WO-…` is no ID.
REFERENCE = re.compile(r"\bWO-[A-Z]+-\d+\b")
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]*)\)")
CONTENTS = "Contents"
LONGEST_CELL = 400
# A backticked citation: a test file with optional ::names, or ::names alone (the file before it).
CITATION = re.compile(r"`(tests/[\w/]+\.py)?((?:::[\w\[\]\-.,=]+)*)`")


def definitions() -> list[tuple[str, str]]:
    return [
        (m.group(1) or m.group(2), doc.name)
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


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def outside_code(lines: list[str]):
    """(number, line) of the lines outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def headings(doc: Path) -> list[tuple[int, str, str]]:
    """(level, text, anchor) of every heading, repeated anchors numbered as GitHub does."""
    seen: Counter[str] = Counter()
    found = []
    for _, line in outside_code(doc.read_text().splitlines()):
        if m := HEADING.match(line):
            anchor = slug(m.group(2))
            found.append((len(m.group(1)), m.group(2), f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor))
            seen[anchor] += 1
    return found


def contents(doc: Path) -> list[str] | None:
    """The link targets of the document's `## Contents` list; None when it has none."""
    lines = doc.read_text().splitlines()
    try:
        start = lines.index(f"## {CONTENTS}")
    except ValueError:
        return None
    targets = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.strip():
            assert re.match(r"^ *- \[", line), f"{doc.name}: not a contents entry: {line!r}"
            targets += [target for _, target in LINK.findall(line)]
    return targets


def test_every_named_requirement_is_defined():
    ids = {rid for rid, _ in definitions()}
    unknown = [
        f"{doc.name}:{n}: {rid}"
        for doc in SPECS
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        for rid in REFERENCE.findall(line)
        if rid not in ids
    ]
    assert not unknown, "\n".join(unknown)


def test_every_document_has_a_table_of_contents_of_its_own_headings():
    problems = []
    for doc in SPECS:
        targets = contents(doc)
        if not targets:
            problems.append(f"{doc.name}: no '## {CONTENTS}' list of links")
            continue
        anchors = {anchor for _, _, anchor in headings(doc)}
        problems += [
            f"{doc.name}: contents link {t} is no heading of it"
            for t in targets
            if t.lstrip("#") not in anchors or not t.startswith("#")
        ]
        listed = set(targets)
        problems += [
            f"{doc.name}: contents lack '## {text}'"
            for level, text, anchor in headings(doc)
            if level == 2 and text != CONTENTS and f"#{anchor}" not in listed
        ]
    assert not problems, "\n".join(problems)


def test_links_between_the_documents_lead_to_their_headings():
    anchors = {doc.name: {anchor for _, _, anchor in headings(doc)} for doc in SPECS}
    where = dict(definitions())
    broken = []
    for doc in SPECS:
        for n, line in outside_code(doc.read_text().splitlines()):
            for text, target in LINK.findall(line):
                if "://" in target or not (target.startswith("#") or target.split("#")[0].endswith(".md")):
                    continue
                name, _, anchor = target.partition("#")
                name = name or doc.name
                if name not in anchors:
                    broken.append(f"{doc.name}:{n}: {target}: no such document in specs/")
                elif anchor and anchor not in anchors[name]:
                    broken.append(f"{doc.name}:{n}: {target}: no such heading")
                elif REFERENCE.fullmatch(text.split("..")[0]) and where.get(text.split("..")[0]) != name:
                    broken.append(f"{doc.name}:{n}: {text} links to {name}, not where it is defined")
    assert not broken, "\n".join(broken)


def test_no_table_cell_is_too_long():
    long = []
    for doc in SPECS:
        for n, line in outside_code(doc.read_text().splitlines()):
            if not line.startswith("|"):
                continue
            for cell in re.split(r"(?<!\\)\|", line.strip().strip("|")):
                if len(cell.strip()) > LONGEST_CELL:
                    long.append(f"{doc.name}:{n}: a cell of {len(cell.strip())} characters: {cell.strip()[:60]}…")
    assert not long, "\n".join(long)
