"""Reward models and ``load_reward``, which turns a spec into one.

Kinds: sequence-classification reward models, sentence-embedding rewards (the embedded
MiniLM default), LLM judges, plain Python callables, and weighted sums. New kinds subclass
RewardModel and plug into ``load_reward`` the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from align_chains.errors import InvalidInputError
from align_chains.models.embedded import EMBEDDED_POLICY, EMBEDDED_REWARD, REWARD_ALIASES
from align_chains.models.policy import Policy
from align_chains.rewards.base import Prompt, RewardModel, WeightedReward
from align_chains.rewards.classifier import ClassifierReward
from align_chains.rewards.embedding import EmbeddingReward
from align_chains.rewards.function import CallableReward
from align_chains.rewards.implicit import ImplicitReward
from align_chains.rewards.judge import JudgeReward

RewardSpec = str | RewardModel | Callable[..., Any] | Sequence[tuple[Any, float]]


def load_reward(
    spec: RewardSpec = EMBEDDED_REWARD,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    policy: Policy | None = None,
    **kwargs: Any,
) -> RewardModel:
    """Build a RewardModel from a spec.

    - a RewardModel: returned as is (share one loaded reward across chat models);
    - ``"judge"``: the policy (``policy=``, else the embedded default) as an LLM judge;
      ``"judge:<model>"`` another causal LM; ``principle=...`` goes to JudgeReward;
    - ``"all-minilm-l6-v2"`` (or ``"minilm"``): the embedded embedding reward; ``kwargs`` such
      as ``principle=...``, ``positive=[...]`` go to EmbeddingReward;
    - a local directory or Hub id: a sentence-transformers model becomes an EmbeddingReward,
      anything else a sequence-classification ClassifierReward;
    - a callable ``fn(prompt, response) -> float``: a CallableReward;
    - a list of ``(spec, weight)`` pairs: a WeightedReward of each loaded spec.

    Args:
        spec: One of the specs above (default: ``"all-minilm-l6-v2"``, the embedded MiniLM).
        device: ``"cpu"``, ``"cuda"``, ... for models loaded from specs (automatic when None).
        dtype: ``"bf16"``, ``"fp32"``, ... for classifier and judge models (automatic when None).
        policy: The policy a plain ``"judge"`` spec judges with (default: the embedded one).
        **kwargs: Passed to the reward's class, e.g. ``principle=``, ``positive=[...]``.

    Returns:
        A ``RewardModel``. Bad specs raise ``InvalidInputError``; missing models
        ``ModelLoadError``, before anything is scored.

    Examples:
        >>> from align_chains import load_reward
        >>> rule = load_reward(lambda prompt, response: -len(response) / 100)
        >>> rule.score(["Hi"], ["Hello"])
        [-0.05]
        >>> kind = load_reward("minilm", principle="Answers are practical and kind.")  # doctest: +SKIP
        >>> mixed = 0.8 * kind + 0.2 * rule  # doctest: +SKIP
        >>> judge = load_reward("judge", principle="The answer is concise.")  # doctest: +SKIP
    """
    if isinstance(spec, RewardModel):
        return spec
    if isinstance(spec, str):
        if not spec.strip():
            raise InvalidInputError("Reward spec is empty: pass a model id, a directory or 'minilm'.")
        kind, _, target = spec.strip().partition(":")
        if kind.lower() == "judge":
            judge = target.strip() or (policy if policy is not None else EMBEDDED_POLICY)
            return JudgeReward(judge, device=device, dtype=dtype, **kwargs)
        if spec.lower() in REWARD_ALIASES:
            return EmbeddingReward(spec, device=device, **kwargs)
        from align_chains.models.hub import resolve_model_dir

        path = resolve_model_dir(spec, what="reward model")
        if (Path(path) / "modules.json").is_file():
            return EmbeddingReward(str(path), device=device, **kwargs)
        return ClassifierReward.from_pretrained(str(path), device=device, dtype=dtype, **kwargs)
    if callable(spec):
        return CallableReward(spec, **kwargs)
    if isinstance(spec, Sequence) and spec and all(isinstance(t, tuple) and len(t) == 2 for t in spec):
        return WeightedReward([(load_reward(s, device=device, dtype=dtype), float(w)) for s, w in spec])
    raise InvalidInputError(
        f"Cannot build a reward from {spec!r}: pass a RewardModel, 'minilm', a model directory "
        "or Hub id, a function (prompt, response) -> float, or a list of (spec, weight) pairs."
    )


__all__ = [
    "CallableReward",
    "ClassifierReward",
    "EmbeddingReward",
    "ImplicitReward",
    "JudgeReward",
    "Prompt",
    "RewardModel",
    "RewardSpec",
    "WeightedReward",
    "load_reward",
]
