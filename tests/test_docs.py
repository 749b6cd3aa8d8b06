"""The documentation stays true to the code: commands, API reference coverage, docstrings."""

from __future__ import annotations

import re
from pathlib import Path

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
