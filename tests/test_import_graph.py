"""The package's import graph: no cycles, no private names across modules, layers point down.

The graph is read from the source with ``ast`` (nothing is imported) by
``docs/_hooks/import_graph.py``, which the docs also render architecture.md's edge table from:
a lazy import inside a function counts as much as one at the top of a file; only
``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_hooks"))
from import_graph import GRAPH, MODULES  # the shared graph (the docs render it too)

# Each module of align_chains sits in one layer and may import only its own layer or lower ones.
LAYERS = [
    ("errors", "progress", "settings", "cli_options", "cancellation"),
    ("models",),
    ("engine",),
    ("rewards", "tasks"),
    ("strategies",),
    ("chat_models", "rerank", "embeddings", "agent_middleware"),
    ("evaluation", "plots", "memory", "testing", "cli"),
]


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
