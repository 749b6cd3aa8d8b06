"""The import graph of align_chains and its integrations, read from the source with ``ast``.

Nothing is imported, so a lazy import inside a function counts as much as one at the top of a
file; only ``if TYPE_CHECKING:`` blocks are left out. ``tests/test_import_graph.py`` checks the
graph (no cycles, layers point down) and ``docs/_hooks/tables.py`` renders the room-to-room edge
table of docs/architecture.md from the same data.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "align_chains": ROOT / "align_chains",
    "align_chains_server": ROOT / "integrations" / "server" / "align_chains_server",
    "align_chains_llamaindex": ROOT / "integrations" / "llamaindex" / "align_chains_llamaindex",
    "align_chains_ray": ROOT / "integrations" / "ray" / "align_chains_ray",
}


def find_modules() -> dict[str, Path]:
    """Dotted module name -> its file, for every module of the four packages."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = find_modules()


def is_type_checking(node: ast.If) -> bool:
    """Whether an ``if`` is ``if TYPE_CHECKING:`` (its imports are for annotations only)."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{base}.{n}" in MODULES]
            found.extend((f"{base}.{n}", []) for n in submodules)
            found.append((base, [n for n in names if n not in submodules]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


# module -> {imported module of the four packages: the names taken from it}
GRAPH = {
    module: {target: names for target, names in imports_of(module, path) if target in MODULES}
    for module, path in MODULES.items()
}


def room(module: str) -> str:
    """The room a module lives in: ``align_chains.X...`` -> ``X``; an integration -> its package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "align_chains" and len(parts) > 1 else parts[0]


def room_edges() -> dict[str, set[str]]:
    """Room -> the other rooms its modules import (the package root ``align_chains`` included)."""
    edges: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        edges.setdefault(room(module), set()).update(room(t) for t in targets)
    return {name: targets - {name} for name, targets in edges.items()}
