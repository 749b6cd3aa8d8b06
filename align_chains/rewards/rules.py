"""Rule rewards that need no model: repetition (``rule:distinct``) and word lists (``lexicon:``).

Cheap held-out signals for evaluation (a strategy never optimises them), and usable anywhere a
reward spec is taken.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

from align_chains.errors import InvalidInputError
from align_chains.rewards.function import CallableReward

_WORD = re.compile(r"[\w']+")


def distinct_bigrams(prompt: str, response: str) -> float:
    """Distinct word bigrams over all word bigrams (1.0: no repetition; 0.0: empty or one word looped)."""
    words = _WORD.findall(response.lower())
    pairs = list(itertools.pairwise(words))
    if not pairs:
        return 0.0 if not words else 1.0
    return len(set(pairs)) / len(pairs)


RULES: dict[str, Callable[[str, str], float]] = {"distinct": distinct_bigrams}


def lexicon_words(words: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The distinct lower-cased words of a lexicon, sorted; at least one, else a clear error."""
    wanted = sorted({w.strip().lower() for w in words if w.strip()})
    if not wanted:
        raise InvalidInputError("lexicon: needs at least one word, e.g. lexicon:because,example,step.")
    return tuple(wanted)


def lexicon_reward(words: list[str] | tuple[str, ...], **kwargs: Any) -> CallableReward:
    """Fraction of ``words`` the response uses (case-insensitive, whole words); ``kwargs`` go to
    CallableReward."""
    wanted = set(lexicon_words(words))

    def score(prompt: str, response: str) -> float:
        return len(wanted & set(_WORD.findall(response.lower()))) / len(wanted)

    return CallableReward(score, **{"name": f"lexicon:{','.join(sorted(wanted))}", **kwargs})
