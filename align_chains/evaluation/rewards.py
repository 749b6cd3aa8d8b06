"""Reward specs for evaluation: the optimised reward and a held-out one the strategies never see.

Both are ordinary reward specs (``align_chains.rewards.specs``, the one parser): "judge",
"judge:<model>", "minilm", a classifier directory or Hub id, and the held-out signals:

- ``judge-principle:<sentence>``: the policy as judge, checking a *different* principle;
- ``rule:distinct``: distinct word bigrams / all word bigrams (penalises repetition, a common
  failure of reward hacking and of small models); 0 for an empty answer;
- ``lexicon:word1,word2,...``: the fraction of the listed words the answer uses;
- ``python:package.module:function``: any ``fn(prompt, response) -> float`` you write.
"""

from __future__ import annotations

from typing import Any

from align_chains.models.policy import Policy
from align_chains.rewards import RewardModel, load_reward
from align_chains.rewards.rules import RULES, distinct_bigrams, lexicon_reward


def load_eval_reward(spec: Any, policy: Policy, device: str | None = None) -> RewardModel:
    """A reward from an evaluation spec (see the module docstring); shares the policy's weights."""
    return load_reward(spec, device=device, policy=policy)


__all__ = ["RULES", "distinct_bigrams", "lexicon_reward", "load_eval_reward"]
