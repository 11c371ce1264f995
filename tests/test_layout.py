"""The code layout rules of docs/DECISIONS.md ("Code layout"): short functions and modules, no import inside a
function except an optional dependency named in a comment, and training/ never importing service/."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "service", "modelstore", "benchmarks", "scripts")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450
LONG_MODULE_MARK = "Long module:"  # a module over MAX_MODULE_LINES says why in its docstring after this mark


def _modules() -> Iterator[tuple[Path, str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            yield path.relative_to(ROOT), source, ast.parse(source)


MODULES = list(_modules())


def test_the_scan_sees_the_code() -> None:
    names = {str(p) for p, _, _ in MODULES}
    assert {"training/train/loop.py", "service/api/app.py", "modelstore/store.py"} <= names


def test_no_function_is_over_80_lines() -> None:
    long = [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for path, _, tree in MODULES
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]
    assert not long, long


def test_no_module_is_over_450_lines_without_a_reason() -> None:
    long = [
        f"{path} ({source.count(chr(10))} lines)"
        for path, source, tree in MODULES
        if source.count("\n") > MAX_MODULE_LINES and LONG_MODULE_MARK not in (ast.get_docstring(tree) or "")
    ]
    assert not long, long


def test_imports_inside_functions_are_optional_dependencies_named_in_a_comment() -> None:
    unmarked = []
    for path, source, tree in MODULES:
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Import | ast.ImportFrom)
                    and "# optional" not in lines[inner.lineno - 1]
                ):
                    unmarked.append(f"{path}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert not unmarked, unmarked


@pytest.mark.parametrize("package", ["training", "modelstore"])
def test_package_never_imports_the_service(package: str) -> None:
    found = [
        f"{path}:{node.lineno}"
        for path, _, tree in MODULES
        if path.parts[0] == package
        for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "service")
        or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "service" for a in node.names))
    ]
    assert not found, found
