"""The test helpers live in one place (tests/support/) and none is written twice."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import tests.support

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(tests.support.__file__).parent
MIN_STATEMENTS = 6  # statements, nested ones included: smaller bodies may coincide by nature


def _modules() -> list[Path]:
    return sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


def _functions(path: Path) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.name, node) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


def _body_key(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return ast.dump(ast.Module(body=body, type_ignores=[]), annotate_fields=False)


def test_the_old_helper_modules_are_gone() -> None:
    for old in ("helpers.py", "http_helpers.py", "openapi_subset.py"):
        assert not (ROOT / "tests" / old).exists(), old
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("helpers", "http_helpers", "openapi_subset"):
                raise AssertionError(f"{path.relative_to(ROOT)} imports {node.module}: use tests.support")


def test_no_module_redefines_a_support_helper() -> None:
    public = {name for path in SUPPORT.glob("*.py") for name, _ in _functions(path) if not name.startswith("_")}
    clashes = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in _modules()
        if SUPPORT not in path.parents
        for name, fn in _functions(path)
        if name in public and fn.col_offset == 0
    ]
    assert clashes == [], f"import these from tests.support instead: {clashes}"


def test_no_function_body_is_written_twice() -> None:
    """Two functions with the same statements (docstrings aside) anywhere in tests/ or benchmarks/."""
    seen: dict[str, list[str]] = defaultdict(list)
    for path in _modules():
        for name, fn in _functions(path):
            if sum(isinstance(n, ast.stmt) for n in ast.walk(fn)) - 1 >= MIN_STATEMENTS:
                seen[_body_key(fn)].append(f"{path.relative_to(ROOT)}:{fn.lineno} {name}")
    twice = [places for places in seen.values() if len(places) > 1]
    assert twice == [], f"one helper in tests/support instead of: {twice}"
