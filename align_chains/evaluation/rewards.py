"""Reward specs for evaluation: the optimised reward and a held-out one the strategies never see.

Everything ``load_reward`` takes ("judge", "judge:<model>", "minilm", a classifier directory or
Hub id), plus three kinds of held-out signal:

- ``judge-principle:<sentence>``: the policy as judge, checking a *different* principle;
- ``rule:distinct``: distinct word bigrams / all word bigrams (penalises repetition, a common
  failure of reward hacking and of small models); 0 for an empty answer;
- ``lexicon:word1,word2,...``: the fraction of the listed words the answer uses;
- ``python:module:function``: any ``fn(prompt, response) -> float`` you write.
"""

from __future__ import annotations

import importlib
import itertools
import re
from typing import Any

from align_chains.errors import InvalidInputError
from align_chains.models.policy import Policy
from align_chains.rewards import CallableReward, JudgeReward, RewardModel, load_reward

_WORD = re.compile(r"[\w']+")


def distinct_bigrams(prompt: str, response: str) -> float:
    """Distinct word bigrams over all word bigrams (1.0: no repetition; 0.0: empty or one word looped)."""
    words = _WORD.findall(response.lower())
    pairs = list(itertools.pairwise(words))
    if not pairs:
        return 0.0 if not words else 1.0
    return len(set(pairs)) / len(pairs)


def lexicon_reward(words: list[str]) -> CallableReward:
    """Fraction of ``words`` the response uses (case-insensitive, whole words)."""
    wanted = {w.strip().lower() for w in words if w.strip()}
    if not wanted:
        raise InvalidInputError("lexicon: needs at least one word, e.g. lexicon:because,example,step.")

    def score(prompt: str, response: str) -> float:
        return len(wanted & set(_WORD.findall(response.lower()))) / len(wanted)

    return CallableReward(score, name=f"lexicon:{','.join(sorted(wanted))}")


RULES = {"distinct": distinct_bigrams}


def check_reward_spec(spec: str) -> None:
    """Fail before any model loads on a spec that cannot be resolved (unknown rule, bad import)."""
    kind, _, rest = spec.partition(":")
    if kind == "rule" and rest not in RULES:
        raise InvalidInputError(f"Unknown rule {rest!r}; available: {sorted(RULES)}.")
    if kind == "lexicon":
        lexicon_reward(rest.split(","))
    if kind == "judge-principle" and not rest.strip():
        raise InvalidInputError(
            "judge-principle: needs a sentence, e.g. judge-principle:The answer is concise."
        )
    if kind == "python":
        _import_function(rest)
    if not spec.strip():
        raise InvalidInputError("Empty reward spec; pass e.g. 'judge', 'minilm' or 'rule:distinct'.")


def _import_function(target: str) -> Any:
    module, _, name = target.rpartition(":")
    if not module or not name:
        raise InvalidInputError(f"python: needs module:function, got {target!r}.")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InvalidInputError(f"Cannot import reward function {target!r}: {exc}.") from None
    if not callable(fn):
        raise InvalidInputError(f"{target!r} is not callable.")
    return fn


def load_eval_reward(spec: Any, policy: Policy, device: str | None = None) -> RewardModel:
    """A reward from an evaluation spec (see the module docstring); shares the policy's weights."""
    if not isinstance(spec, str):
        return load_reward(spec, device=device, policy=policy)
    check_reward_spec(spec)
    kind, _, rest = spec.partition(":")
    if kind == "rule":
        return CallableReward(RULES[rest], name=spec)
    if kind == "lexicon":
        return lexicon_reward(rest.split(","))
    if kind == "judge-principle":
        return JudgeReward(policy, principle=rest.strip(), device=device)
    if kind == "python":
        return CallableReward(_import_function(rest), name=spec)
    return load_reward(spec, device=device, policy=policy)
