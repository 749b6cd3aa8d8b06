"""The package's layers: lower layers never import higher ones, and the core never imports an integration.

Checked on the source (every import statement, lazy ones inside functions included), so a new
import that breaks the layering fails here rather than as an import cycle later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import align_chains

PACKAGE = Path(align_chains.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a source file imports anywhere in its body."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offending_imports(files: list[Path], forbidden: str) -> dict[str, list[str]]:
    found = {}
    for path in files:
        bad = sorted(m for m in imported_modules(path) if m == forbidden or m.startswith(forbidden + "."))
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    return found


def test_the_core_never_imports_an_integration():
    files = sorted(PACKAGE.rglob("*.py"))
    assert files
    assert offending_imports(files, "align_chains_server") == {}


@pytest.mark.parametrize("layer", ["models", "engine", "rewards"])
def test_lower_layers_never_import_the_chat_models(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    assert offending_imports(files, "align_chains.chat_models") == {}
