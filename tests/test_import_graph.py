"""The package's import graph: no cycles, no private names across modules, layers point down.

The graph is read from the source with ``ast`` (nothing is imported) by
``docs/_hooks/import_graph.py``, which the docs also render architecture.md's edge table from:
a lazy import inside a function counts as much as one at the top of a file; only
``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_hooks"))
from import_graph import GRAPH, MODULES  # the shared graph (the docs render it too)

ENGINE = MODULES["align_chains.engine"].parent

# Each module of align_chains sits in one layer and may import only its own layer or lower ones.
LAYERS = [
    ("errors", "progress", "settings", "cli_options", "cancellation", "scheduling", "turns"),
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


# -- the engine's private attributes stay inside engine/ ------------------------------------------
def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def engine_internals(folder: Path = ENGINE) -> tuple[set[str], set[str]]:
    """(the engine's class names, the private attribute and method names its classes define)."""
    classes: set[str] = set()
    private: set[str] = set()
    for path in folder.rglob("*.py"):
        for cls in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)):
            classes.add(cls.name)
            for node in ast.walk(cls):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _is_private(node.name):
                    private.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                        private.update({node.attr} if _is_private(node.attr) else set())
                elif isinstance(node, ast.AnnAssign | ast.Assign) and node in cls.body:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    private.update(t.id for t in targets if isinstance(t, ast.Name) and _is_private(t.id))
    return classes, private


def _names_of_engine_objects(tree: ast.AST, classes: set[str]) -> set[str]:
    """Variables and ``self.`` attributes a module binds to engine objects: annotated with an
    engine class, or assigned from a call of one (``decoder = Decoder(policy)``)."""
    found: set[str] = set()

    def mentions(expr: ast.AST | None) -> bool:
        return expr is not None and any(isinstance(n, ast.Name) and n.id in classes for n in ast.walk(expr))

    def bind(target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            found.add(target.id)
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
            found.add(f"{target.value.id}.{target.attr}")

    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and mentions(node.annotation):
            found.add(node.arg)
        elif isinstance(node, ast.AnnAssign) and mentions(node.annotation):
            bind(node.target)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and mentions(node.value.func):
            for target in node.targets:
                bind(target)
    return found


def private_engine_reads(source: str, classes: set[str], private: set[str]) -> list[str]:
    """``obj._name`` reads in ``source`` of an engine object's private member: the name is one an
    engine class defines, or ``obj`` is bound to an engine object (see ``_names_of_engine_objects``).
    ``self._x`` and ``cls._x`` are a class's own business and never count."""
    tree = ast.parse(source)
    engine_objects = _names_of_engine_objects(tree, classes)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if node.attr in private or ast.unparse(node.value) in engine_objects:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_outside_the_engine_reads_an_engine_objects_private_attribute():
    classes, private = engine_internals()
    offenders = [
        f"{module} {read}"
        for module, path in sorted(MODULES.items())
        if not path.is_relative_to(ENGINE)
        for read in private_engine_reads(path.read_text(), classes, private)
    ]
    assert not offenders, (
        f"private engine attributes read outside engine/ (give the engine public API): {offenders}"
    )


def test_the_private_attribute_check_catches_a_strategy_reaching_into_the_decoder():
    """The check is real: re-adding the old ``decoder._logits_to_keep`` read (the decoder no
    longer has it; it is an engine object) or a ``PreallocatedLayer`` buffer read is reported."""
    classes, private = engine_internals()
    assert {"Decoder", "Batch", "PreallocatedLayer"} <= classes and "_key_buf" in private
    strategy = (
        "def start(decoder: Decoder, batch):\n"
        "    kwargs = {'logits_to_keep': 1} if decoder._logits_to_keep else {}\n"
        "    return batch.cache.layers[0]._key_buf, kwargs\n"
        "def own(self):\n"
        "    return self._mine\n"
    )
    assert private_engine_reads(strategy, classes, private) == [
        "line 2: decoder._logits_to_keep",
        "line 3: batch.cache.layers[0]._key_buf",
    ]
    built = "def run(policy):\n    decoder = Decoder(policy)\n    return decoder._stop_criteria\n"
    assert private_engine_reads(built, classes, private) == ["line 3: decoder._stop_criteria"]
