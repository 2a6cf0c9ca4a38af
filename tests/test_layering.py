"""How src/mathloop is layered, read from the source: the building blocks never import the stages built on them,
and no two modules import each other (directly or through others)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mathloop"

# Packages that stages are built from; they may not import the stages (mathloop.pipeline) or the command (mathloop.cli).
LOWER = ("train", "reward", "data", "tools", "backends", "verify")
UPPER = ("mathloop.pipeline", "mathloop.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_no_building_block_imports_a_stage_or_the_command():
    offenders = []
    for layer in LOWER:
        for path in sorted((SRC / layer).rglob("*.py")):
            for name in imports(path):
                if any(name == upper or name.startswith(upper + ".") for upper in UPPER):
                    offenders.append(f"{path.relative_to(SRC.parent)} imports {name}")
    assert offenders == []


def test_the_walk_sees_imports_inside_functions(tmp_path):
    # the rule is only as good as the walk: a lazy import inside a function counts
    assert "mathloop.pipeline.evaluate" in imports(SRC / "pipeline" / "loop.py")
    assert "mathloop.runs.new_run_record" in imports(SRC / "train" / "rm.py")



def test_a_stage_borrows_no_other_stages_helpers():
    # what eval and sample share lives in pipeline/generate.py; a stage may still run another (the loop runs them all)
    for stage in ("sample", "evolve"):
        assert not {name for name in imports(SRC / "pipeline" / f"{stage}.py")
                    if name.startswith("mathloop.pipeline.evaluate")}, stage
    assert "mathloop.pipeline.generate.generation_resources" in imports(SRC / "pipeline" / "sample.py")

# Import cycles that exist and are known, each to be removed (then dropped from here):
KNOWN_CYCLES: list[set[str]] = []


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
