"""How the package is layered, read from the source: which module imports which."""

from __future__ import annotations

import ast
from pathlib import Path

import mathloop

SRC = Path(mathloop.__file__).parent

# Import cycles that exist and are known, each to be removed (then dropped from here):
KNOWN_CYCLES = [
    # verify: equivalence <-> extract <-> pool through lazy imports; the verify developer / lead breaks it.
    {"mathloop.verify.equivalence", "mathloop.verify.extract", "mathloop.verify.pool"},
]


def module_imports() -> dict[str, set[str]]:
    """mathloop module -> the mathloop modules it imports anywhere in its file (function-level imports count: a
    lazy import still ties the two modules together)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from package import submodule` imports the submodule
                    child = f"{node.module}.{alias.name}"
                    targets.add(child if child in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative).

    >>> [sorted(c) for c in import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})]
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(component)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles(module_imports())
    unknown = [sorted(c) for c in cycles if c not in KNOWN_CYCLES]
    assert not unknown, f"import cycles: {unknown}"
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"these known cycles are gone: drop them from KNOWN_CYCLES: {gone}"


def test_the_cycle_finder_sees_a_cycle_through_a_lazy_import():
    graph = module_imports()
    assert "mathloop.runs" in graph["mathloop.records"]  # a function-level import counts
    graph["mathloop.records"] = graph["mathloop.records"] | {"mathloop.generate"}  # generate imports records
    assert any({"mathloop.records", "mathloop.generate"} <= c for c in import_cycles(graph))
