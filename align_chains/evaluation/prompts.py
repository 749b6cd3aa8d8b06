"""Prompt files for ``align-chains eval``: JSONL, one prompt a line, validated before any model loads.

Each line is a JSON object with either ``"prompt"`` (one user turn) or ``"messages"`` (a list of
``{"role", "content"}`` turns), and optionally an ``"id"`` (default: ``"line-<n>"``)::

    {"id": "sleep-tips", "prompt": "Give me three tips for better sleep."}
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}

A line may carry its own ``"reward"``: a task family with its parameters, or your verifier,
which receives the answer and the whole line (so any other field of the line is yours)::

    {"prompt": "Use: dog, moon.", "reward": {"family": "keywords", "words": ["dog", "moon"]}}
    {"prompt": "What is 17 * 3?", "reward": "python:my_checks:exact", "expected": "51"}

Every line's reward is checked here, before any model loads (``tasks.parse_line_reward``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align_chains.errors import InvalidInputError
from align_chains.models.chat import as_conversation
from align_chains.tasks import LineReward, parse_line_reward

STARTER_PROMPTS = Path(__file__).parent / "data" / "starter.jsonl"


@dataclass(frozen=True)
class EvalPrompt:
    """One prompt of an evaluation: a stable id (for resuming) and its chat messages."""

    id: str
    messages: list[dict[str, str]]
    reward: LineReward | None = None  # the line's own reward, if it has one
    split: str | None = None  # "dev" / "test" for generated task instances

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "messages": self.messages}
        if self.reward is not None:
            task = self.reward.describe()
            out["task"] = task if isinstance(task, dict) else {"verifier": task}
        if self.split is not None:
            out["split"] = self.split
        return out


def load_prompts(path: str | Path = STARTER_PROMPTS) -> list[EvalPrompt]:
    """Read and validate a JSONL prompt file; raises InvalidInputError naming the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(
            f"Prompt file {str(path)!r} does not exist; pass a JSONL file (one prompt a line)."
        )
    prompts: list[EvalPrompt] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"{where} is not valid JSON ({exc.msg}); write one JSON object a line."
            ) from None
        prompts.append(parse_prompt(record, where, default_id=f"line-{number}"))
        if prompts[-1].id in seen:
            raise InvalidInputError(f"{where}: id {prompts[-1].id!r} is used twice; ids must be unique.")
        seen.add(prompts[-1].id)
    if not prompts:
        raise InvalidInputError(f"Prompt file {str(path)!r} has no prompts; write one JSON object a line.")
    return prompts


def parse_prompt(record: Any, where: str, default_id: str) -> EvalPrompt:
    """One JSONL record -> EvalPrompt (``prompt`` or ``messages``, optional ``id``)."""
    if not isinstance(record, dict):
        raise InvalidInputError(
            f'{where}: expected a JSON object like {{"prompt": "..."}}, got {type(record).__name__}.'
        )
    # a line with its own reward may carry any other field: its verifier receives the line
    unknown = [] if "reward" in record else sorted(set(record) - {"id", "prompt", "messages", "split"})
    if unknown or ("prompt" in record) == ("messages" in record):
        raise InvalidInputError(
            f'{where}: give exactly one of "prompt" (a string) or "messages" (role/content turns), and '
            f'optionally "id" and "reward" (other fields need a "reward" to read them); got keys '
            f"{sorted(record)}."
        )
    prompt_id = record.get("id", default_id)
    if not isinstance(prompt_id, str) or not prompt_id.strip():
        raise InvalidInputError(f'{where}: "id" must be a non-empty string; got {prompt_id!r}.')
    raw = record.get("prompt", record.get("messages"))
    if isinstance(raw, str) and not raw.strip():
        raise InvalidInputError(f'{where}: "prompt" is empty.')
    try:
        conversation = as_conversation(raw)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None
    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in conversation]
    reward = parse_line_reward(record["reward"], record, where) if "reward" in record else None
    split = None if record.get("split") is None else str(record["split"])
    return EvalPrompt(id=prompt_id, messages=messages, reward=reward, split=split)
