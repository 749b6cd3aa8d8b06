"""Every ``python benchmarks/<script>.py ...`` command the docs quote still parses.

The scripts share their options through ``benchmarks/common.py``; a renamed or dropped option
would leave a documented command that fails. Each command is parsed with the script's own
parser (the script runs up to ``parse_args`` and stops there: nothing loads).
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_COMMAND = re.compile(r"python benchmarks/(\w+\.py)([^\n`|#]*)")
# shell variables in the docs' loops, given a value each
_SHELL = {"$row": "guard", "$w": "2"}


def _documented() -> list[tuple[str, str]]:
    found = set()
    for page in [*ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md"]:
        for match in _COMMAND.finditer(page.read_text(encoding="utf-8")):
            args = match.group(2).strip().rstrip("\\").strip()
            for name, value in _SHELL.items():
                args = args.replace(name, value)
            found.add((match.group(1), args))
    return sorted(found)


class _Parsed(Exception):
    """Raised in place of running a script once its arguments parsed."""


@pytest.mark.parametrize(("script", "args"), _documented())
def test_documented_benchmark_command_parses(script, args, monkeypatch):
    parse = argparse.ArgumentParser.parse_args

    def parse_only(self, argv=None, namespace=None):
        raise _Parsed(parse(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr("sys.argv", [f"benchmarks/{script}", *shlex.split(args)])
    with pytest.raises(_Parsed):
        runpy.run_path(str(ROOT / "benchmarks" / script), run_name="__main__")


def test_the_docs_quote_benchmark_commands():
    assert len(_documented()) >= 20
