"""MkDocs hooks that let docs/ stay plain Markdown that reads well on a code host.

- Links from a page to repository files outside docs/ (``../align_chains/plots.py``,
  ``../benchmarks/bench_sea.py``) work on a code host as they are. In the site, each such file
  gets a generated page under ``source/`` showing it, and the link is rewritten to that page.
  A link to a file that does not exist is left alone, so ``mkdocs build --strict`` fails on it.
- The cookbook notebooks (``cookbook/*.ipynb``) are added to the site as ``cookbook/<name>.ipynb``
  before mkdocs-jupyter renders them, so they live in one place: cookbook/.
- ``<!-- settings-table: align_chains.BestOfNChatModel -->`` in a page becomes a table of that
  chat model's settings with their defaults and descriptions and the server limits its
  strategies declare, read from the classes at build time, so it never drifts from the code.
- ``<!-- strategy-table -->``, ``<!-- strategy-table: choosing -->`` and
  ``<!-- import-graph-table -->`` become the tables ``tables.py`` renders from the strategy
  registry and the import graph.
"""

from __future__ import annotations

import importlib
import json
import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.utils import get_relative_url
from tables import render as render_tables

log = logging.getLogger("mkdocs.hooks.site")

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = "source"  # generated pages for repository files, under the site root
NOTEBOOK_DIR = "cookbook"
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
_HREF = re.compile(r'(href=")([^"]+)(")')
_FENCE = re.compile(r"^\s*(```|~~~)")
_SETTINGS = re.compile(r"<!--\s*settings-table:\s*([\w.]+)\s*-->")
_LANGUAGES = {
    ".py": "python",
    ".toml": "toml",
    ".json": "json",
    ".yml": "yaml",
    ".yaml": "yaml",
    ".md": "markdown",
}


def _repo_target(page_repo_path: str, target: str) -> tuple[str, str] | None:
    """(repository path, anchor) when a relative link from a page points at an existing file."""
    if "://" in target or target.startswith(("#", "/", "mailto:")):
        return None
    path, _, anchor = target.partition("#")
    repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(page_repo_path), path))
    if repo_path.startswith("../") or not (ROOT / repo_path).exists():
        return None
    return repo_path, anchor


def _outside_docs_target(page_uri: str, target: str) -> tuple[str, str] | None:
    """Like ``_repo_target`` for a docs page, but only for files outside docs/ (mkdocs handles the rest)."""
    resolved = _repo_target(f"docs/{page_uri}", target)
    return None if resolved is None or resolved[0].startswith("docs/") else resolved


def _site_uri(repo_path: str) -> str:
    """The site file that stands for a repository file: its docs page, notebook, or source page."""
    if repo_path.startswith("docs/"):
        return repo_path.removeprefix("docs/")
    if (ROOT / repo_path).is_dir():
        return f"{SOURCE_DIR}/{repo_path}/index.md"
    return repo_path if _is_notebook(repo_path) else f"{SOURCE_DIR}/{repo_path}.md"


def _listed_files(directory: str) -> list[str]:
    """The files of a repository folder that a folder page lists (no caches, no hidden files)."""
    return sorted(
        f"{directory}/{p.name}"
        for p in (ROOT / directory).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix not in (".pyc",)
    )


def _folder_page(directory: str) -> str:
    items = "\n".join(
        f"- [`{path.rsplit('/', 1)[-1]}`]({path.rsplit('/', 1)[-1]}.md)" for path in _listed_files(directory)
    )
    return f"# `{directory}/`\n\n{items}\n"


def _is_notebook(repo_path: str) -> bool:
    return repo_path.startswith(f"{NOTEBOOK_DIR}/") and repo_path.endswith(".ipynb")


def _links_outside_fences(markdown: str) -> list[str]:
    targets, fenced = [], False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            targets.extend(match.group(2) for match in _LINK.finditer(line))
    return targets


def _source_page(repo_path: str) -> str:
    text = (ROOT / repo_path).read_text(encoding="utf-8")
    fence = "````" if "```" in text else "```"
    language = _LANGUAGES.get(Path(repo_path).suffix, "text")
    return f"# `{repo_path}`\n\n{fence}{language}\n{text}\n{fence}\n"


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into notebook pages
def on_files(files: Files, config: Any) -> Files:
    for notebook in sorted((ROOT / NOTEBOOK_DIR).glob("*.ipynb")):
        files.append(
            File(
                f"{NOTEBOOK_DIR}/{notebook.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]
            )
        )
    linked: set[str] = set()
    for file in list(files):
        if file.src_uri.endswith(".md") and file.abs_src_path and Path(file.abs_src_path).is_file():
            markdown = Path(file.abs_src_path).read_text(encoding="utf-8")
            for target in _links_outside_fences(markdown):
                resolved = _outside_docs_target(file.src_uri, target)
                if resolved and not _is_notebook(resolved[0]):
                    linked.add(resolved[0])
    for notebook in sorted((ROOT / NOTEBOOK_DIR).glob("*.ipynb")):  # links in notebooks' markdown
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] == "markdown":
                for match in _LINK.finditer("".join(cell["source"])):
                    resolved = _repo_target(f"{NOTEBOOK_DIR}/{notebook.name}", match.group(2))
                    if resolved and not resolved[0].startswith("docs/") and not _is_notebook(resolved[0]):
                        linked.add(resolved[0])
    for folder in sorted(p for p in linked if (ROOT / p).is_dir()):
        linked.discard(folder)
        linked.update(_listed_files(folder))
        files.append(File.generated(config, f"{SOURCE_DIR}/{folder}/index.md", content=_folder_page(folder)))
    for repo_path in sorted(linked):
        files.append(File.generated(config, f"{SOURCE_DIR}/{repo_path}.md", content=_source_page(repo_path)))
    return files


def _rewrite_links(markdown: str, page_uri: str) -> str:
    out, fenced = [], False
    page_dir = posixpath.dirname(page_uri)

    def replace(match: re.Match[str]) -> str:
        resolved = _outside_docs_target(page_uri, match.group(2))
        if resolved is None:
            return match.group(0)
        repo_path, anchor = resolved
        target = posixpath.relpath(_site_uri(repo_path), page_dir or ".") + (f"#{anchor}" if anchor else "")
        return f"{match.group(1)}{target}{match.group(3)}"

    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
            out.append(line)
        else:
            out.append(line if fenced else _LINK.sub(replace, line))
    return "".join(out)


def _settings_table(dotted: str) -> str:
    module_name, _, class_name = dotted.rpartition(".")
    return settings_table(getattr(importlib.import_module(module_name), class_name))


def settings_table(cls: Any) -> str:
    """A chat model's settings with their defaults and meanings, and what its strategies declare:
    the settings that multiply the work with the largest value a server admits (``work_bounds``),
    and whether they keep a grammar (``follows_grammar``)."""
    from langchain_core.language_models import BaseChatModel

    from align_chains.strategies.declarations import default_limits

    strategies = cls.strategy_classes()
    limits = default_limits(strategies)
    langchain_fields = set(BaseChatModel.model_fields)  # cache, callbacks, tags, ...: LangChain's own
    rows = ["| setting | default | server limit | meaning |", "| --- | --- | --- | --- |"]
    for name, field in cls.model_fields.items():
        if name in langchain_fields or name.startswith("_"):
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        label = f"`{name}`" + (f" (`{field.alias}=`)" if field.alias and field.alias != name else "")
        limit = f"{limits[name]:g}" if name in limits else ""
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| {label} | `{default}` | {limit} | {meaning} |")
    grammar = "yes" if all(s.follows_grammar for s in strategies) else "no"
    note = (
        "\nA server limit marks a setting that multiplies a request's work (`time_budget_s`: its wall "
        "time): `align-chains serve` refuses larger values (`--limit NAME=MAX` changes the limit) and "
        "costs every request with the strategy's own cost model. Keeps a grammar (bound tools, "
        f"schemas, `grammar=`, `regex=`): {grammar}.\n"
    )
    return "\n".join(rows) + "\n" + note


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    markdown = _SETTINGS.sub(lambda match: _settings_table(match.group(1)), markdown)
    markdown = render_tables(markdown)
    return _rewrite_links(markdown, page.file.src_uri)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """In a rendered notebook, point links that work on a code host (``../docs/sea.md``,
    ``05_adaptive_best_of_n.ipynb``, ``retrieval_chain.py``) at the site's pages for those files."""
    if not _is_notebook(page.file.src_uri):
        return html

    def replace(match: re.Match[str]) -> str:
        resolved = _repo_target(page.file.src_uri, match.group(2))
        if resolved is None:
            return match.group(0)
        repo_path, anchor = resolved
        file = files.get_file_from_path(_site_uri(repo_path))
        if file is None:
            log.warning("%s links to %s, which is not in the site", page.file.src_uri, repo_path)
            return match.group(0)
        url = get_relative_url(file.url, page.url) + (f"#{anchor}" if anchor else "")
        return f"{match.group(1)}{url}{match.group(3)}"

    return _HREF.sub(replace, html)
