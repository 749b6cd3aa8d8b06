"""Differentiable ("soft") scoring: a reward of a prompt and a relaxed response.

SEA needs ``r(x, soft(y))`` as a function of token *distributions*, so it can follow the
gradient. A reward that can do this returns a ``SoftScorer`` from
``reward.soft_scorer(prompts, rows, policy)``: the prompts are encoded once, when the scorer
is built (causal reward models keep a KV cache of everything before the response), and each
call feeds only the relaxed response and the fixed text after it.

``probs`` are distributions over the *policy's* vocabulary, ``[rows, L, V_policy]``. The scorer
maps them into the reward model's input embeddings through a ``VocabularyBridge``: exact when
both share a vocabulary, else a sparse string match (see ``vocab_bridge``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from align_chains.engine.forward import prefill_left_padded, run
from align_chains.rewards.vocab_bridge import VocabularyBridge

SENTINEL = "ALIGNCHAINSRESPONSESLOT"


class SoftScorer(ABC):
    """Maps relaxed responses ``[rows, L, V_policy]`` to rewards ``[rows]``, differentiably."""

    #: policy tokens that reach the reward (1.0 on an exact path)
    coverage: float = 1.0
    #: True when the reward reads the policy's tokens directly (no vocabulary bridge)
    exact: bool = True

    @abstractmethod
    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        """Rewards ``[rows]`` of the relaxed responses; gradients flow into ``probs``."""

    @property
    def path(self) -> str:
        return "exact" if self.exact else "bridge"


class WeightedSoftScorer(SoftScorer):
    """A weighted sum of soft scorers (the soft side of WeightedReward)."""

    def __init__(self, parts: Sequence[tuple[SoftScorer, float]]) -> None:
        self.parts = list(parts)
        self.coverage = min(p.coverage for p, _ in self.parts)
        self.exact = all(p.exact for p, _ in self.parts)

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        return sum(weight * scorer(probs) for scorer, weight in self.parts)  # type: ignore[return-value]


def split_template(render: Callable[[str], str]) -> tuple[str, str]:
    """The text before and after the response in ``render(response)``."""
    text = render(SENTINEL)
    if text.count(SENTINEL) != 1:
        raise ValueError("the reward's template does not place the response exactly once")
    before, after = text.split(SENTINEL)
    return before, after


class CausalSoftScorer(SoftScorer):
    """Soft scoring through a decoder-only transformer: prefix (cached) + soft response + suffix.

    ``head`` turns the last position's hidden state ``[rows, d]`` into rewards ``[rows]``
    (a classifier's score head, or a judge's yes/no log-odds). The prefixes are prefilled
    once, left-padded, under ``no_grad``; every call builds a fresh cache view of them, so
    no graph is kept from one call to the next.
    """

    def __init__(
        self,
        model: Any,
        prefixes: Sequence[Sequence[int]],
        suffix: Sequence[int],
        rows: Sequence[int],
        bridge: VocabularyBridge,
        head: Callable[[torch.Tensor], torch.Tensor],
        pad_token_id: int,
    ) -> None:
        self.model = model
        self.base = model.base_model
        self.bridge = bridge
        self.head = head
        self.coverage = bridge.coverage
        self.exact = bridge.exact
        embeddings = model.get_input_embeddings().weight
        self.embedding_weight = embeddings
        device = embeddings.device
        prefill = prefill_left_padded(self.base, prefixes, pad_token_id, device, mode="no_grad")
        mask = prefill.mask
        index = torch.as_tensor(list(rows), dtype=torch.long, device=device)
        self._prefix_kv = [(layer.keys[index], layer.values[index]) for layer in prefill.cache.layers]
        self._prefix_mask = mask[index]
        self._suffix = torch.as_tensor(list(suffix), dtype=torch.long, device=device)
        self.prefix_tokens = int(mask.sum())

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        rows = probs.shape[0]
        weight = self.embedding_weight
        soft = self.bridge.embed(probs, weight)  # [rows, L, d]
        suffix = weight[self._suffix].unsqueeze(0).expand(rows, -1, -1)
        inputs = torch.cat([soft, suffix], dim=1)
        cache = DynamicCache(ddp_cache_data=self._prefix_kv)
        out = run(self.base, embeds=inputs, cache=cache, past_mask=self._prefix_mask, mode="grad")
        assert out.hidden is not None
        return self.head(out.hidden[:, -1]).float()
