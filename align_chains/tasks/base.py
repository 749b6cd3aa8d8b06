"""What a task family is: seeded instances, an exact reward, a prefix rule, a surrogate, a success test.

A family turns a seed into parameters (``generate``) and parameters into a prompt (``prompt``);
everything else reads ``(params, text)`` and is exact by construction: no model judges it.

- ``reward(params, text)``: in [0, 1], 1 when the constraint is fully met;
- ``success(params, text)``: the constraint fully met (what a user would accept);
- ``prefix(params, text, remaining)``: the reward of an unfinished answer with ``remaining``
  tokens of budget left; at ``remaining == 0`` it equals ``reward`` (the answer is final);
- ``surrogate(params, tokenizer)``: a differentiable function of token distributions that
  equals ``reward`` on one-hot inputs (SEA's gradient), or ``None`` where there is none.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from align_chains.errors import InvalidInputError

WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
Surrogate = Callable[[torch.Tensor], torch.Tensor]  # probs [rows, L, V] -> rewards [rows]


def words(text: str) -> list[str]:
    """The words of a text (letters/digits, with an inner apostrophe: "don't" is one word)."""
    return WORD.findall(text)


def uses_word(text: str, word: str) -> bool:
    """True when a word of ``text`` starts with ``word`` (case-insensitive): "dogs" uses "dog"."""
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(word), text, re.IGNORECASE) is not None


def instance_rng(family: str, split: str, index: int) -> random.Random:
    """The generator of instance ``index`` of a family's split (dev and test never share a seed)."""
    return random.Random(f"align-chains-tasks:{family}:{split}:{index}")


class TaskFamily(ABC):
    """One family of tasks; see the module docstring. Subclasses are stateless."""

    name: ClassVar[str]
    description: ClassVar[str]
    prefix_rule: ClassVar[str]  # how unfinished answers are judged, in words (docs)
    surrogate_rule: ClassVar[str]  # the differentiable surrogate, or why there is none

    @abstractmethod
    def generate(self, rng: random.Random) -> dict[str, Any]:
        """Parameters of one instance (JSON-able)."""

    @abstractmethod
    def prompt(self, params: dict[str, Any]) -> str:
        """The user's request for these parameters."""

    @abstractmethod
    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validated, normalised parameters; raises InvalidInputError naming the fix."""

    @abstractmethod
    def reward(self, params: dict[str, Any], text: str) -> float:
        """Exact reward in [0, 1]."""

    @abstractmethod
    def success(self, params: dict[str, Any], text: str) -> bool:
        """The constraint fully met."""

    def prefix(self, params: dict[str, Any], text: str, remaining: int) -> float:
        """Reward of an unfinished answer; the full reward by default (meaningful for additive rewards)."""
        return self.reward(params, text)

    def surrogate(self, params: dict[str, Any], tokenizer: Any) -> Surrogate | None:
        """A differentiable reward of token distributions, or None (SEA does not apply)."""
        return None

    # -- helpers for subclasses ------------------------------------------------------------
    def need(self, params: dict[str, Any], key: str, kind: type, example: str) -> Any:
        value = params.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidInputError(
                f'task family {self.name!r} needs "{key}" ({kind.__name__}), e.g. {example}; got {value!r}.'
            )
        return value

    def word_list(self, params: dict[str, Any], key: str = "words") -> list[str]:
        value = params.get(key)
        ok = isinstance(value, list) and value and all(isinstance(w, str) and words(w) == [w] for w in value)
        if not ok:
            raise InvalidInputError(
                f'task family {self.name!r} needs "{key}": a non-empty list of single words, '
                f'e.g. ["river", "bread"]; got {value!r}.'
            )
        return [w.lower() for w in value]
