"""The documentation stays true to the code: commands, API reference coverage, docstrings."""

from __future__ import annotations

import ast
import doctest
import inspect
import itertools
import re
from pathlib import Path

import pydantic
import pytest

import align_chains

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def readme_command(step: str) -> str:
    """The fenced block after ``<!-- ci:STEP -->`` in the README, as .ci/run reads it."""
    match = re.search(rf"<!-- ci:{step} -->\n```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert match, f"README has no ci:{step} block"
    return match.group(1).strip()


def test_getting_started_shows_the_commands_ci_runs() -> None:
    page = (DOCS / "getting_started.md").read_text()
    for step in ("install", "test"):
        assert readme_command(step) in page, f"docs/getting_started.md lacks the README's ci:{step} command"


def test_ci_builds_the_site_strictly_and_installs_its_tools() -> None:
    assert "mkdocs build --strict" in readme_command("test")
    assert re.search(r'-e "\.\[[^]]*\bdocs\b[^]]*\]"', readme_command("install"))


def test_the_api_reference_lists_every_public_name() -> None:
    page = (DOCS / "api.md").read_text()
    listed = set(re.findall(r"^::: align_chains\.(\w+)$", page, re.M))
    assert listed == set(align_chains.__all__), (
        f"docs/api.md is missing {sorted(set(align_chains.__all__) - listed)} "
        f"and lists unknown {sorted(listed - set(align_chains.__all__))}"
    )


# --- docstrings of the public API (what the API reference renders) ---------------------------------

_ARG = re.compile(r"^(\w+)(?:\s*\([^)]*\))?:\s")


def _section(doc: str, title: str) -> list[str] | None:
    """The lines of a Google-style section (``Args:``, ``Examples:``), dedented, or None."""
    lines = doc.expandtabs().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"{title}:":
            indent = len(line) - len(line.lstrip())
            body = []
            for following in lines[i + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following)
            width = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
            return [b[width:] for b in body]
    return None


def _documented_args(doc: str) -> list[str]:
    return [m.group(1) for line in _section(doc, "Args") or [] if (m := _ARG.match(line))]


def _constructor_args(obj: object) -> tuple[set[str], set[str]]:
    """(every name the constructor accepts, the names the docstring must cover)."""
    if inspect.isclass(obj) and issubclass(obj, pydantic.BaseModel):
        fields = obj.model_fields
        accepted = set(fields) | {f.alias for f in fields.values() if f.alias}
        own = {
            name
            for name in vars(obj).get("__annotations__", {})
            if name in fields and not name.startswith("_")
        }
        return accepted, own
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = [
        p
        for p in inspect.signature(target).parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    names = {p.name for p in params}
    return names, names


def _constant_docstring(name: str) -> str | None:
    """The string literal right after ``NAME = ...`` in the module that defines it."""
    for path in (ROOT / "align_chains").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for before, after in itertools.pairwise(tree.body):
            targets = before.targets if isinstance(before, ast.Assign) else [getattr(before, "target", None)]
            named = any(isinstance(t, ast.Name) and t.id == name for t in targets)
            if named and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                return str(after.value.value)
    return None


PUBLIC = sorted(align_chains.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_docstring_with_its_arguments_and_an_example(name: str) -> None:
    obj = getattr(align_chains, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        doc = _constant_docstring(name)
        assert doc and doc.strip(), f"align_chains.{name}: add a docstring (a string literal) after it"
        return
    doc = inspect.cleandoc(vars(obj).get("__doc__") or "") if inspect.isclass(obj) else inspect.getdoc(obj)
    assert doc, f"align_chains.{name} has no docstring of its own"
    accepted, required = _constructor_args(obj)
    documented = _documented_args(doc)
    is_error = inspect.isclass(obj) and issubclass(obj, Exception)
    if is_error and not required:
        return  # an exception class: what it means is the docstring; it takes a message
    missing = required - set(documented)
    assert not missing, f"align_chains.{name}: its 'Args:' section must document {sorted(missing)}"
    assert not (unknown := set(documented) - accepted), (
        f"align_chains.{name}: 'Args:' documents {sorted(unknown)}, which it does not accept"
    )
    examples = _section(doc, "Examples")
    assert examples and any(line.lstrip().startswith(">>>") for line in examples), (
        f"align_chains.{name}: add an 'Examples:' section with a >>> line"
    )


@pytest.mark.parametrize("name", PUBLIC)
def test_docstring_examples_run(name: str) -> None:
    """Examples that need no model run as doctests; the rest are marked ``# doctest: +SKIP``."""
    obj = getattr(align_chains, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(obj, name, globs={}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"align_chains.{name}: {result.failed} example(s) failed (output above)"
