"""The layout follows the pipeline: imports only go down it, and no modules import each other
in a loop. Read from the source (every import, the ones inside functions included)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "curate"
# errors and the package face at the bottom, then the stages (the select wing on classify's scores), the Python API, then the commands and the CLI
RANK = {"errors": 0, "core": 1, "ingest": 2, "classify": 3, "select": 4, "validate": 5, "api": 6, "app": 7,
        "commands": 8, "cli": 9}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                target = f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                if target in known and target != name:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    return found


@functools.cache   # read once for the two tests
def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _rank(name: str) -> int | None:
    parts = name.split(".")
    return 0 if len(parts) == 1 else RANK.get(parts[1])


def test_imports_only_go_down_the_pipeline():
    graph = _graph()
    assert "curate.select.filter" in graph and "curate.core.workspace" in graph  # the layout was read
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                    if _rank(a) is not None and _rank(b) is not None and _rank(b) > _rank(a))
    assert upward == []


def test_no_modules_import_each_other_in_a_loop():
    graph = _graph()
    state: dict[str, int] = {}
    loops = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loops.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert loops == []
