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
from align_chains.models.embedded import EMBEDDED_POLICY, EMBEDDED_REWARD
from align_chains.models.policy import Policy
from align_chains.rewards.base import Prompt, RewardModel, WeightedReward
from align_chains.rewards.classifier import ClassifierReward
from align_chains.rewards.embedding import EmbeddingReward
from align_chains.rewards.function import CallableReward
from align_chains.rewards.implicit import ImplicitReward
from align_chains.rewards.judge import JudgeReward
from align_chains.rewards.rules import RULES, lexicon_reward
from align_chains.rewards.served import ServedReward
from align_chains.rewards.specs import (
    EmbeddedSpec,
    FunctionSpec,
    GivenSpec,
    JudgeSpec,
    LexiconSpec,
    ParsedReward,
    RuleSpec,
    ServedSpec,
    WeightedSpec,
    parse_reward_spec,
)

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

    The spec is parsed by ``align_chains.rewards.specs.parse_reward_spec`` (the one parser every
    entry point uses), so a bad one fails before any model loads.

    - a RewardModel: returned as is (share one loaded reward across chat models);
    - ``"judge"``: the policy (``policy=``, else the embedded default) as an LLM judge;
      ``"judge:<model>"`` another causal LM; ``"judge-principle:<sentence>"`` the policy
      judging that principle; ``principle=...`` goes to JudgeReward;
    - ``"all-minilm-l6-v2"`` (or ``"minilm"``): the embedded embedding reward; ``kwargs`` such
      as ``principle=...``, ``positive=[...]`` go to EmbeddingReward;
    - ``"python:package.module:function"``: that ``fn(prompt, response) -> float``;
    - ``"rule:distinct"`` (repetition) and ``"lexicon:w1,w2"`` (words used): rule rewards;
    - a local directory or Hub id: a sentence-transformers model becomes an EmbeddingReward,
      anything else a sequence-classification ClassifierReward;
    - ``"http://host:port/score"`` (``/classify``, ``/rerank``): a ServedReward calling a reward
      model served by vLLM, TEI or ``align-chains serve-reward``; ``api=``, ``timeout=``,
      ``retries=``, ``batch_size=`` go to it;
    - a callable ``fn(prompt, response) -> float``: a CallableReward;
    - a list of ``(spec, weight)`` pairs: a WeightedReward of each loaded spec (each term
      judges with the same ``policy=``).

    Args:
        spec: One of the specs above (default: ``"all-minilm-l6-v2"``, the embedded MiniLM).
        device: ``"cpu"``, ``"cuda"``, ... for models loaded from specs (automatic when None).
        dtype: ``"bf16"``, ``"fp32"``, ... for classifier and judge models (automatic when None).
        policy: The policy ``"judge"`` and ``"judge-principle:"`` specs judge with, weighted
            terms included (default: the embedded one).
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
    return _build(parse_reward_spec(spec), device=device, dtype=dtype, policy=policy, **kwargs)


def _build(
    parsed: ParsedReward,
    *,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    policy: Policy | None,
    **kwargs: Any,
) -> RewardModel:
    """The RewardModel a parsed spec describes; terms of a weighted sum get the same policy."""
    if isinstance(parsed, GivenSpec):
        if isinstance(parsed.value, RewardModel):
            return parsed.value
        return CallableReward(parsed.value, **kwargs)
    if isinstance(parsed, WeightedSpec):
        if kwargs:
            raise InvalidInputError(
                f"Settings {sorted(kwargs)} cannot go to a weighted reward as a whole: load each "
                "term with its own settings and pass [(RewardModel, weight), ...]."
            )
        terms = [(_build(t, device=device, dtype=dtype, policy=policy), w) for t, w in parsed.terms]
        return WeightedReward(terms)
    if isinstance(parsed, JudgeSpec):
        if parsed.principle is not None:
            if "principle" in kwargs:
                raise InvalidInputError(
                    "judge-principle:<sentence> already names the principle; drop principle=."
                )
            kwargs["principle"] = parsed.principle
        if parsed.model is None and getattr(policy, "runs_in_llama_cpp", False):
            raise InvalidInputError(
                "A judge reward reads the judge's logits in transformers, and this policy runs in "
                "llama.cpp: name the judge model instead (e.g. 'judge:smollm2-135m-instruct')."
            )
        judge = parsed.model or (policy if policy is not None else EMBEDDED_POLICY)
        return JudgeReward(judge, device=device, dtype=dtype, **kwargs)
    if isinstance(parsed, FunctionSpec):
        return CallableReward(parsed.function, **{"name": parsed.text, **kwargs})
    if isinstance(parsed, RuleSpec):
        return CallableReward(RULES[parsed.name], **{"name": f"rule:{parsed.name}", **kwargs})
    if isinstance(parsed, LexiconSpec):
        return lexicon_reward(parsed.words, **kwargs)
    if isinstance(parsed, EmbeddedSpec):
        return EmbeddingReward(parsed.alias, device=device, **kwargs)
    if isinstance(parsed, ServedSpec):
        return ServedReward(parsed.url, **kwargs)
    from align_chains.models.hub import resolve_model_dir

    path = resolve_model_dir(parsed.source, what="reward model")
    if (Path(path) / "modules.json").is_file():
        return EmbeddingReward(str(path), device=device, **kwargs)
    return ClassifierReward.from_pretrained(str(path), device=device, dtype=dtype, **kwargs)


__all__ = [
    "CallableReward",
    "ClassifierReward",
    "EmbeddingReward",
    "ImplicitReward",
    "JudgeReward",
    "Prompt",
    "RewardModel",
    "RewardSpec",
    "ServedReward",
    "WeightedReward",
    "load_reward",
    "parse_reward_spec",
]
