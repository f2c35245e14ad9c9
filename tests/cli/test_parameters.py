"""No function in curate/ takes more than 8 parameters, but the click command functions (one
per option): past that, an options object (FilterSpec, FilterOutput...) names what travels
together and cannot be passed in the wrong order. Read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "curate"
MOST = 8


def _count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return len(names) - (names[:1] in (["self"], ["cls"])) + (a.vararg is not None) + (a.kwarg is not None)


def _is_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any("click." in ast.unparse(d) or "command" in ast.unparse(d) for d in fn.decorator_list)


def _over() -> dict[str, int]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_command(node):
                if _count(node) > MOST:
                    out[f"{module}.{node.name}"] = _count(node)
    return out


def test_no_function_takes_more_than_eight_parameters():
    assert _over() == {}

