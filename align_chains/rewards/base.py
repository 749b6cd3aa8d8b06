"""The reward interface: batched ``score(prompts, responses) -> list[float]``.

Subclasses implement ``_score``; the public ``score`` validates inputs and outputs once for
every kind of reward, so a misbehaving reward fails loudly with its name in the message.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from align_chains.errors import InvalidInputError, RewardError
from align_chains.models.chat import Conversation, as_conversation

if TYPE_CHECKING:
    from align_chains.rewards.soft import SoftScorer

Prompt = str | Sequence[Mapping[str, Any]]


class RewardModel(ABC):
    """Scores responses to prompts; higher is better.

    A prompt is a string (one user turn) or a chat conversation (list of role/content dicts).
    """

    name: str = "reward"

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """Score each (prompt, response) pair in one batched call."""
        if isinstance(prompts, str) or isinstance(responses, str):
            raise InvalidInputError(
                "score() takes parallel lists: score([prompt], [response]), not bare strings."
            )
        if len(prompts) != len(responses):
            raise InvalidInputError(
                f"score() got {len(prompts)} prompts and {len(responses)} responses; pass one "
                "prompt per response."
            )
        if not responses:
            return []
        conversations = [as_conversation(p) for p in prompts]
        try:
            raw = self._score(conversations, list(responses))
        except (RewardError, InvalidInputError):
            raise
        except Exception as exc:
            raise RewardError(
                f"Reward {self.name!r} raised {type(exc).__name__} while scoring "
                f"{len(responses)} responses: {exc}"
            ) from exc
        return self._check(raw, len(responses))

    def _check(self, raw: Any, expected: int) -> list[float]:
        if isinstance(raw, str | bytes | Mapping):
            raise RewardError(
                f"Reward {self.name!r} must return a sequence of numbers; got {type(raw).__name__}."
            )
        try:
            scores = [float(s) for s in raw]
        except (TypeError, ValueError) as exc:
            raise RewardError(
                f"Reward {self.name!r} must return a sequence of numbers; got {type(raw).__name__}."
            ) from exc
        if len(scores) != expected:
            raise RewardError(
                f"Reward {self.name!r} returned {len(scores)} scores for {expected} responses; "
                "it must return exactly one score per response."
            )
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise RewardError(
                f"Reward {self.name!r} returned non-finite scores (at positions {bad[:5]}); "
                "return finite floats, e.g. clamp or replace NaN with a low score."
            )
        return scores

    @abstractmethod
    def _score(self, prompts: list[Conversation], responses: list[str]) -> Sequence[float]:
        """Return one score per response."""

    # -- differentiable scoring (SEA) ------------------------------------------------------
    def soft_scorer(self, prompts: Sequence[Prompt], rows: Sequence[int], policy: Any) -> SoftScorer:
        """A differentiable scorer of relaxed responses to ``prompts`` (row i answers ``prompts[rows[i]]``).

        Rewards that can score token distributions override this; the prompts are encoded once.
        """
        raise InvalidInputError(
            f"Reward {self.name!r} ({type(self).__name__}) has no differentiable scoring path, which "
            "SEA needs. Use a reward that has one (a sequence-classification ClassifierReward, a "
            "JudgeReward, or the MiniLM EmbeddingReward), or a strategy that only needs scores: "
            "best-of-n, darwin or reward-guided."
        )

    @property
    def supports_soft_scoring(self) -> bool:
        """True when ``soft_scorer`` is implemented (SEA can use this reward)."""
        return type(self).soft_scorer is not RewardModel.soft_scorer

    # rewards compose: 0.7 * relevance + 0.3 * verifier
    def __add__(self, other: RewardModel) -> RewardModel:
        from align_chains.rewards.weighted import WeightedReward

        return WeightedReward.of(self, 1.0) + WeightedReward.of(other, 1.0)

    def __mul__(self, weight: float) -> RewardModel:
        from align_chains.rewards.weighted import WeightedReward, check_weight

        return WeightedReward.of(self, check_weight(self, weight))

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
