"""Rooms a newcomer can read: no function over 80 lines, no core module over 500 lines.

Argument-parser builders are exempt (a long list of ``add_argument`` calls reads fine).
``python tests/test_code_size.py`` prints the longest functions and modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTION_LIMIT = 80
MODULE_LIMIT = 500
SOURCES = [ROOT / "align_chains", ROOT / "integrations"]
# argparse builders: one add_argument call per option
EXEMPT_FUNCTIONS = {"build_parser", "_build_parser", "add_parser_options"}


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "tests" not in p.relative_to(ROOT).parts)


def function_lengths() -> list[tuple[int, str]]:
    """(lines, 'path:line name') for every function and method, longest first."""
    found = []
    for folder in SOURCES:
        for path in _python_files(folder):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    found.append((lines, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def module_lengths() -> list[tuple[int, str]]:
    """(lines, path) for every module of the core package, longest first."""
    found = [
        (len(path.read_text(encoding="utf-8").splitlines()), str(path.relative_to(ROOT)))
        for path in _python_files(ROOT / "align_chains")
    ]
    return sorted(found, reverse=True)


def test_no_function_over_the_limit() -> None:
    long = [
        f"{where} ({lines} lines)"
        for lines, where in function_lengths()
        if lines > FUNCTION_LIMIT and where.rsplit(" ", 1)[1] not in EXEMPT_FUNCTIONS
    ]
    assert not long, f"functions over {FUNCTION_LIMIT} lines; split them along their seams: {long}"


def test_no_core_module_over_the_limit() -> None:
    long = [f"{path} ({lines} lines)" for lines, path in module_lengths() if lines > MODULE_LIMIT]
    assert not long, f"modules of align_chains over {MODULE_LIMIT} lines; split them: {long}"


def test_the_counter_sees_a_long_function(tmp_path: Path, monkeypatch) -> None:
    """The check reads real files: a 90-line function in a scanned folder is reported."""
    body = "\n".join(f"    x{i} = {i}" for i in range(89))
    (tmp_path / "long.py").write_text(f"def too_long():\n{body}\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", [tmp_path])
    assert function_lengths()[0] == (90, "long.py:1 too_long")


if __name__ == "__main__":
    print("longest functions:")
    for lines, where in function_lengths()[:15]:
        print(f"  {lines:4d}  {where}")
    print("longest modules of align_chains:")
    for lines, path in module_lengths()[:10]:
        print(f"  {lines:4d}  {path}")
