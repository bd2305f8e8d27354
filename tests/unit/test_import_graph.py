"""The runtime package's imports: no circle, the channel a leaf, no benchmark code.

Read from the source (every `import` and `from … import` at any depth, a function's
lazy import included), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import worker_orcd

ROOT = Path(worker_orcd.__file__).parent
PACKAGE = "worker_orcd"
# What the two processes share may lean on these two leaves only.
CHANNEL_MAY_IMPORT = {"worker_orcd.errors", "worker_orcd.log"}


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_of(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules `name` imports: of this package resolved to the module itself, others
    by their top-level name."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import mod` imports the submodule when there is one.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != PACKAGE:
                found.add(target.split(".")[0])
                continue
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan's), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _internal(imports: set[str]) -> set[str]:
    return {m for m in imports if m.startswith(PACKAGE + ".")}


def test_the_runtime_package_has_no_import_circle():
    graph = {name: _internal(deps) for name, deps in import_graph().items()}
    # A package's __init__ importing its own parts is no circle of its modules.
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    assert cycles(graph) == []


def test_the_channel_is_a_leaf():
    for name, deps in import_graph().items():
        if name == "worker_orcd.channel" or name.startswith("worker_orcd.channel."):
            outside = {d for d in _internal(deps) if not d.startswith("worker_orcd.channel")}
            assert outside <= CHANNEL_MAY_IMPORT, (name, outside)


def test_the_engine_process_imports_nothing_of_the_front():
    front = ("worker_orcd.jobs", "worker_orcd.http", "worker_orcd.supervisor", "worker_orcd.worker")
    for name, deps in import_graph().items():
        if name.startswith("worker_orcd.engine."):
            assert not {d for d in deps if d.startswith(front)}, name


def test_the_runtime_package_never_imports_the_benchmarks():
    importers = sorted(name for name, deps in import_graph().items() if "bench" in deps)
    assert importers == []
