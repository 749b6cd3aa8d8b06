"""What a reward adds to a request's memory: its own weights, its model's shape, its scoring batch.

``reward_footprint(reward)`` inspects a loaded RewardModel; ``align_chains.memory.footprint_from_spec``
builds the same from a spec without loading weights. ``scoring_bytes`` is what one scoring call
builds; strategies that keep reward caches of their own (ARGS, early rejection, SEA) add theirs
in ``Strategy.memory``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from align_chains.engine.memory import ModelShape

#: the judge's question around prompt and response, in tokens (see rewards/judge.py)
JUDGE_OVERHEAD_TOKENS = 96


@dataclass(frozen=True)
class RewardFootprint:
    """What a reward adds: its own weights and the shape of its model (None: no model)."""

    name: str
    weights: int = 0
    shape: ModelShape | None = None
    causal: bool = False  # a decoder it runs over prompt + response (classifier, judge, implicit)
    is_policy: bool = False  # the policy's own model: no extra weights
    batch_size: int = 8
    kind: str = "callable"

    def text_tokens(self, width: int, new: int) -> int:
        """Tokens of one scored text: prompt, response and (at most) the judge's question."""
        return width + new + JUDGE_OVERHEAD_TOKENS

    def scoring_bytes(self, rows: int, width: int, new: int) -> int:
        """The largest thing one scoring call over ``rows`` responses builds (0: no model)."""
        shape = self.shape
        if shape is None:
            return 0
        text = self.text_tokens(width, new)
        if self.kind == "implicit":  # full-sequence logits of both views
            return 2 * rows * text * shape.vocab * shape.bytes_per_value + rows * new * shape.vocab * 4
        batch = min(rows, self.batch_size)
        # one left-padded forward over prompt + response, logits of the last token
        return shape.forward_bytes(batch, text, text) + batch * text * shape.kv_bytes_per_token


def reward_footprint(reward: Any, policy_model: Any = None) -> RewardFootprint:
    """Inspect a RewardModel (or None / a callable) for the memory it adds."""
    from align_chains.rewards.base import WeightedReward
    from align_chains.rewards.classifier import ClassifierReward
    from align_chains.rewards.embedding import EmbeddingReward
    from align_chains.rewards.implicit import ImplicitReward
    from align_chains.rewards.judge import JudgeReward

    if reward is None:
        return RewardFootprint(name="none")
    name = getattr(reward, "name", type(reward).__name__)
    if isinstance(reward, WeightedReward):
        parts = [reward_footprint(r, policy_model) for r, _ in reward.terms]
        causal = [p for p in parts if p.shape is not None and p.causal]
        largest = max(causal or parts, key=lambda p: p.weights + (p.shape.weight_bytes if p.shape else 0))
        return RewardFootprint(
            name=name,
            weights=sum(p.weights for p in parts),
            shape=largest.shape,
            causal=largest.causal,
            is_policy=largest.is_policy,
            batch_size=largest.batch_size,
            kind="weighted",
        )
    if isinstance(reward, JudgeReward):
        model = reward.judge.model
        same = model is policy_model
        shape = ModelShape.of(model)
        return RewardFootprint(
            name, 0 if same else shape.weight_bytes, shape, True, same, reward.batch_size, "judge"
        )
    if isinstance(reward, ImplicitReward):
        tuned, untuned = reward.tuned.model, reward.untuned.model
        extra = sum(ModelShape.of(m).weight_bytes for m in {id(tuned): tuned, id(untuned): untuned}.values()
                    if m is not policy_model)  # fmt: skip
        return RewardFootprint(name, extra, ModelShape.of(tuned), True, extra == 0, 8, "implicit")
    if isinstance(reward, ClassifierReward):
        shape = ModelShape.of(reward.model)
        return RewardFootprint(name, shape.weight_bytes, shape, True, False, reward.batch_size, "classifier")
    if isinstance(reward, EmbeddingReward):
        encoder = reward.encoder
        params = {
            t.data_ptr(): t.numel() * t.element_size() for t in [*encoder.parameters(), *encoder.buffers()]
        }
        return RewardFootprint(name, sum(params.values()), None, False, False, reward.batch_size, "embedding")
    return RewardFootprint(name=name)
