"""The package's import graph: no cycles, no private names across modules, layers point down.

Read from the source with ``ast`` (nothing is imported), so a lazy import inside a function
counts as much as one at the top of a file; only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "align_chains": ROOT / "align_chains",
    "align_chains_server": ROOT / "integrations" / "server" / "align_chains_server",
    "align_chains_llamaindex": ROOT / "integrations" / "llamaindex" / "align_chains_llamaindex",
    "align_chains_ray": ROOT / "integrations" / "ray" / "align_chains_ray",
}

# Each module of align_chains sits in one layer and may import only its own layer or lower ones.
LAYERS = [
    ("errors", "progress", "settings", "cli_options", "cancellation"),
    ("models",),
    ("engine",),
    ("rewards",),
    ("strategies",),
    ("chat_models", "rerank", "embeddings", "agent_middleware"),
    ("evaluation", "plots", "memory", "testing", "cli"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
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


GRAPH = {
    module: {target: names for target, names in _imports(module, path) if target in MODULES}
    for module, path in MODULES.items()
}


def test_there_is_no_import_cycle():
    """Tarjan's strongly connected components over explicit imports: none has two modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target == node:
                continue
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            connect(node)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_is_imported_from_another_module():
    offenders = [
        f"{module} imports {name} from {target}"
        for module, targets in GRAPH.items()
        for target, names in targets.items()
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert not offenders, offenders


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "align_chains" or len(parts) == 1:
        return None
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    raise AssertionError(f"{module} is in no layer of LAYERS: add its room there")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("align_chains.")))
def test_align_chains_imports_only_its_own_layer_or_lower(module):
    rank = _layer(module)
    upward = [t for t in GRAPH[module] if (r := _layer(t)) is not None and rank is not None and r > rank]
    integrations = [t for t in GRAPH[module] if not t.startswith("align_chains.") and t != "align_chains"]
    assert not upward, f"{module} imports from a higher layer: {upward}"
    assert not integrations, f"{module} imports an integration: {integrations}"
