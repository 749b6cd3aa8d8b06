"""Reading an ``align-chains eval`` results file for the report, with errors that say what to do.

A results file is rewritten after every batch of an evaluation, so the report must read one
from a run still in progress (some cells missing) or resumed, from before candidates and traces
were kept (no ``candidates``), and from before task fields existed (no ``constraint_met``). What
it cannot read (not JSON, cut off, not an eval file, a cell without its reward) is refused with
``EvalFileError`` naming the file, the problem and the fix, never turned into a blank page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from align_chains.errors import InvalidInputError

SUPPORTED_VERSIONS = (1, 2)
"""Results-file versions the report reads (1: before task fields; 2: with them)."""


class EvalFileError(InvalidInputError):
    """An eval results file the report cannot read; the message names the file, the problem and the fix."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


class _Prompt(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    messages: list[_Message]
    task: dict[str, Any] | None = None
    split: str | None = None


class _Cell(BaseModel):
    model_config = ConfigDict(extra="allow")
    key: str
    prompt: str
    text: str
    reward: float | None
    holdout: float | None
    strategy: str = ""
    settings: dict[str, Any] = {}
    per_prompt: dict[str, float | None] = {}


class _File(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: int
    config: dict[str, Any]
    prompts: list[_Prompt]
    summary: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    cells: list[_Cell]


def _where(location: tuple[Any, ...]) -> str:
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def _parse(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalFileError(
            f"{path}: no such file; pass the --json file an `align-chains eval` run wrote."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalFileError(f"{path}: cannot be read ({exc}); pass an eval results JSON file.") from None
    if not text.strip():
        raise EvalFileError(
            f"{path}: the file is empty; re-run `align-chains eval --json {path}` to write it."
        )
    try:
        return json.loads(text, parse_constant=lambda name: None)  # NaN, ±Infinity -> None
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or "Unterminated" in exc.msg:
            raise EvalFileError(
                f"{path}: the JSON is cut off (line {exc.lineno}, column {exc.colno}: {exc.msg}): the file "
                "ends before its data does, e.g. a copy cut short (an eval run replaces the file whole after "
                "each batch, so never leaves one). Copy it again, or delete it and re-run "
                f"`align-chains eval --json {path}`."
            ) from None
        raise EvalFileError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); pass the results "
            "file `align-chains eval --json` wrote, unedited."
        ) from None


def load_eval_file(path: str | Path) -> dict[str, Any]:
    """Read and check one results file; returns its data with non-finite numbers (NaN) as None.

    Raises ``EvalFileError`` naming the file, what is wrong (with the JSON path of the bad value)
    and the fix.
    """
    path = Path(path)
    data = _parse(path)
    if not isinstance(data, dict) or "cells" not in data or "config" not in data:
        got = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise EvalFileError(
            f"{path}: not an align-chains eval results file (expected an object with 'version', "
            f"'config', 'prompts' and 'cells'; got {got}); pass the file `align-chains eval --json` wrote."
        )
    if data.get("version") not in SUPPORTED_VERSIONS:
        raise EvalFileError(
            f"{path}: results-file version {data.get('version')!r} is not one this report reads "
            f"({', '.join(map(str, SUPPORTED_VERSIONS))}); open it with the align-chains that wrote it, "
            "or re-run `align-chains eval` with this one."
        )
    try:
        _File.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise EvalFileError(
            f"{path}: {_where(first['loc'])}: {first['msg']} (got {first.get('input')!r:.80}){more}; the "
            "file was edited or written by something else: re-run `align-chains eval` to write it again."
        ) from None
    return data
