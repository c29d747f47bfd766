"""The code stays readable: no function longer than a screen, no module with more than one job's worth of lines."""

from __future__ import annotations

import ast
from pathlib import Path

from shared.config import REPO_ROOT

PACKAGES = ("web", "worker", "shared", "training", "evaluation")
MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py"))


def test_the_packages_hold_modules() -> None:
    assert len(_modules()) > 40  # the walk found the code (a wrong root would pass every check below)


def test_no_module_is_over_the_limit() -> None:
    lines = {str(p.relative_to(REPO_ROOT)): len(p.read_text().splitlines()) for p in _modules()}
    assert {name: n for name, n in lines.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_is_over_the_limit() -> None:
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"] = lines
    assert long == {}
