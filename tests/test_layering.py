"""The layers of src/mathloop: the building blocks never import the stages built on them."""

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
    assert "mathloop.pipeline.evaluate" in imports(SRC / "pipeline" / "sample.py")
    assert "mathloop.runs.new_run_record" in imports(SRC / "train" / "rm.py")
