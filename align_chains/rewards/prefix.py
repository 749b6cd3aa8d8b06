"""Prefix rewards: a reward that knows how to judge an answer that is not finished yet.

Early rejection, ARGS and IVG's chunk search all score *partial* answers. Applying the
full-text reward to a prefix is often wrong: "exactly 12 words" scores every 5-word prefix as
a failure, though it is on track. A reward that implements ``PrefixScoring.score_prefix``
(``prompts``, ``prefixes``, ``remaining`` tokens of budget per row) gets its own prefix rule
used by all three: ``PrefixPartialScorer`` (early rejection), ``PrefixBranchScorer`` (ARGS)
and ``prefix_scores`` (IVG's chunk values). A finished row has ``remaining`` 0, and its
prefix score must then be the full reward, so finished and unfinished rows compare fairly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Batch, Completion, Decoder
from align_chains.models.chat import Conversation
from align_chains.models.policy import Policy
from align_chains.rewards.base import RewardModel
from align_chains.rewards.incremental import BranchScorer
from align_chains.rewards.partial import PartialScorer


class PrefixScoring(ABC):
    """Mixin for a RewardModel with a prefix rule (see the module docstring)."""

    @abstractmethod
    def score_prefix(
        self, prompts: Sequence[Conversation], prefixes: Sequence[str], remaining: Sequence[int]
    ) -> list[float]:
        """Rewards of unfinished answers; ``remaining[i]`` tokens are left (0: finished)."""


def has_prefix_rule(reward: Any) -> bool:
    """True when ``reward`` judges prefixes by its own rule (``PrefixScoring``)."""
    return isinstance(reward, PrefixScoring)


def remaining_tokens(completion: Completion, max_new_tokens: int) -> int:
    """Tokens of budget a row has left: 0 once it stopped, else the budget minus what it made."""
    if completion.finish_reason == "stop":
        return 0
    return max(0, max_new_tokens - completion.generated_tokens)


def prefix_scores(
    reward: RewardModel,
    conversations: Sequence[Conversation],
    completions: Sequence[Completion],
    max_new_tokens: int,
    counters: ComputeCounters,
) -> list[float]:
    """Scores of partial completions: the reward's prefix rule when it has one, else its full score."""
    texts = [c.text for c in completions]
    counters.reward_calls += 1
    counters.reward_items += len(texts)
    if has_prefix_rule(reward):
        remaining = [remaining_tokens(c, max_new_tokens) for c in completions]
        return reward.score_prefix(list(conversations), texts, remaining)  # type: ignore[attr-defined]
    return reward.score(list(conversations), texts)


class PrefixPartialScorer(PartialScorer):
    """Early rejection's scorer for a reward with a prefix rule: decode, then ``score_prefix``."""

    def __init__(self, reward: RewardModel, policy: Policy, counters: ComputeCounters) -> None:
        self.reward, self.policy, self.counters = reward, policy, counters
        self.conversations: list[Conversation] = []
        self.max_new_tokens = 0

    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None:
        self.conversations = list(conversations)
        self.max_new_tokens = max_new_tokens

    def score(self, batch: Batch) -> list[float]:
        completions = Decoder(self.policy, ComputeCounters()).completions(batch)
        convs = [self.conversations[int(p)] for p in batch.prompt_index.tolist()]
        return prefix_scores(self.reward, convs, completions, self.max_new_tokens, self.counters)


class PrefixBranchScorer(BranchScorer):
    """ARGS's scorer for a reward with a prefix rule: each branch is "answer so far + token".

    A branch ending in EOS is a finished answer (0 tokens left): it gets the full reward, so
    the search can tell when stopping now meets the task (e.g. an exact word count).
    """

    def __init__(self, reward: RewardModel, policy: Policy, counters: ComputeCounters) -> None:
        self.reward, self.policy, self.counters = reward, policy, counters
        self.conversations: list[Conversation] = []
        self.responses: list[list[int]] = []
        self.max_new_tokens = 0
        self.eos = set(policy.eos_token_ids)

    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None:
        self.conversations = [conversations[p] for p in prompt_of_row]
        self.responses = [[] for _ in prompt_of_row]
        self.max_new_tokens = max_new_tokens

    def score(self, candidates: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        rows, k = candidates.shape
        ids = candidates.tolist()
        live = alive.nonzero().flatten().tolist()
        texts, prompts, remaining = [], [], []
        for r in live:
            left = self.max_new_tokens - len(self.responses[r]) - 1
            for j in range(k):
                token = ids[r][j]
                ended = token in self.eos
                body = self.responses[r] if ended else [*self.responses[r], token]
                texts.append(self.policy.decode(body))
                prompts.append(self.conversations[r])
                remaining.append(0 if ended else max(0, left))
        values = torch.zeros((rows, k), dtype=torch.float32, device=candidates.device)
        if texts:
            self.counters.reward_calls += 1
            self.counters.reward_items += len(texts)
            scores = self.reward.score_prefix(prompts, texts, remaining)  # type: ignore[attr-defined]
            values[alive] = torch.tensor(scores, dtype=torch.float32, device=candidates.device).view(-1, k)
        return values

    def commit(self, column: torch.Tensor, tokens: torch.Tensor) -> None:
        for response, token in zip(self.responses, tokens.tolist(), strict=True):
            response.append(token)
