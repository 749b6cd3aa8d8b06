"""Task families with exact rewards, seeded instances, and per-prompt rewards (``tasks/reward.py``).

``instances("keywords", "dev", 30)`` gives 30 prompt-file lines of a family's dev split; the
test split uses other seeds. See docs/tasks.md for every family's rewards.
"""

from __future__ import annotations

from typing import Any

from align_chains.errors import InvalidInputError
from align_chains.tasks.base import TaskFamily, instance_rng, uses_word, words
from align_chains.tasks.families import FAMILIES
from align_chains.tasks.reward import (
    FunctionLineReward,
    LineReward,
    RoutedReward,
    TaskLineReward,
    conversation_key,
    parse_line_reward,
)

SPLITS = ("dev", "test")


def instances(family: str, split: str, count: int) -> list[dict[str, Any]]:
    """``count`` prompt-file lines (``{"id", "prompt", "reward", "split"}``) of a family's split."""
    if family not in FAMILIES:
        raise InvalidInputError(f"Unknown task family {family!r}; choose from {sorted(FAMILIES)}.")
    if split not in SPLITS:
        raise InvalidInputError(f"Unknown split {split!r}; choose 'dev' (tuning) or 'test' (reporting).")
    task = FAMILIES[family]
    lines = []
    for index in range(count):
        params = task.generate(instance_rng(family, split, index))
        lines.append(
            {
                "id": f"{family}-{split}-{index}",
                "prompt": task.prompt(params),
                "reward": {"family": family, **params},
                "split": split,
            }
        )
    return lines


__all__ = [
    "FAMILIES",
    "SPLITS",
    "FunctionLineReward",
    "LineReward",
    "RoutedReward",
    "TaskFamily",
    "TaskLineReward",
    "conversation_key",
    "instances",
    "parse_line_reward",
    "uses_word",
    "words",
]
