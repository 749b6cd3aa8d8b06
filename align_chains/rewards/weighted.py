"""A weighted sum of rewards, each scored in its own batched call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation
from align_chains.rewards.base import Prompt, RewardModel
from align_chains.rewards.soft import SoftScorer, WeightedSoftScorer


def check_weight(reward: RewardModel, weight: object) -> float:
    """A weight is a real number (not a bool, not a numeric string)."""
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise InvalidInputError(f"Weight for {reward.name!r} must be a number; got {weight!r}.")
    return float(weight)


class WeightedReward(RewardModel):
    """``sum_i w_i * r_i(x, y)``.

    Build with ``WeightedReward([(r1, 0.7), (r2, 0.3)])`` or ``0.7 * r1 + 0.3 * r2``.
    """

    def __init__(self, terms: Sequence[tuple[RewardModel, float]]) -> None:
        if not terms:
            raise InvalidInputError("WeightedReward needs at least one (reward, weight) term.")
        for reward, weight in terms:
            if not isinstance(reward, RewardModel):
                raise InvalidInputError(
                    f"WeightedReward terms must be RewardModel instances; got {type(reward).__name__}. "
                    "Wrap plain functions with CallableReward or load_reward()."
                )
            check_weight(reward, weight)
        self.terms = [(reward, float(weight)) for reward, weight in terms]
        self.name = " + ".join(f"{w:g}*{r.name}" for r, w in self.terms)

    @classmethod
    def of(cls, reward: RewardModel, weight: float) -> WeightedReward:
        if isinstance(reward, WeightedReward):
            return cls([(r, w * weight) for r, w in reward.terms])
        return cls([(reward, weight)])

    def __add__(self, other: RewardModel) -> WeightedReward:
        return WeightedReward(self.terms + WeightedReward.of(other, 1.0).terms)

    def _score(self, prompts: list[Conversation], responses: list[str]) -> list[float]:
        total = [0.0] * len(responses)
        for reward, weight in self.terms:
            for i, s in enumerate(reward.score(prompts, responses)):
                total[i] += weight * s
        return total

    def soft_scorer(self, prompts: Sequence[Prompt], rows: Sequence[int], policy: Any) -> SoftScorer:
        missing = [r.name for r, _ in self.terms if not r.supports_soft_scoring]
        if missing:
            raise InvalidInputError(
                f"WeightedReward {self.name!r} has terms with no differentiable path ({missing}), so "
                "SEA cannot use it. Drop those terms for SEA, or use best-of-n, darwin or reward-guided."
            )
        return WeightedSoftScorer([(r.soft_scorer(prompts, rows, policy), w) for r, w in self.terms])

    @property
    def supports_soft_scoring(self) -> bool:
        return all(r.supports_soft_scoring for r, _ in self.terms)
