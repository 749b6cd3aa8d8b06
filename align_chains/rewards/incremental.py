"""Token-level reward scoring for guided decoding (ARGS): score k next-token branches per row.

A guided decoder asks, at every token, "what would the reward be if this row continued with
each of these k tokens?". A ``BranchScorer`` answers for all rows at once:

- ``start(conversations, prompt_of_row, max_new_tokens)`` prepares per-row state;
- ``score(candidates[B, k], alive[B]) -> [B, k]`` scores each row's response so far + each
  candidate (rows that have finished may be skipped);
- ``commit(column[B], tokens[B])`` appends each row's chosen candidate (its column in the last
  scored ``candidates``, and its token id).

``ClassifierBranchScorer`` is the fast path for a sequence-classification reward that shares the
policy's vocabulary: it keeps the reward model's KV cache over prompt + response so far and
feeds the k candidates of a row as k tokens of ONE forward, each attending to the cached prefix
and to itself only (a tree attention mask), so the k branches cost one token each. ``commit``
moves the chosen branch's keys and values into place: the chosen token is never fed again.

``TextBranchScorer`` is the fallback for any other reward: it decodes each branch to text and
calls ``reward.score`` (one batched call per token over B*k texts). Correct, but every call
re-tokenises and re-reads the whole response.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.forward import prefill_left_padded, run_branches
from align_chains.engine.kv_cache import expand_into_preallocated, keep_branch, truncate
from align_chains.models.chat import Conversation
from align_chains.models.policy import Policy
from align_chains.rewards.base import RewardModel


def same_vocabulary(tokenizer_a: Any, tokenizer_b: Any) -> bool:
    """True when two tokenizers map every token string to the same id."""
    if tokenizer_a is tokenizer_b:
        return True
    return len(tokenizer_a) == len(tokenizer_b) and tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


class BranchScorer(ABC):
    """Scores ``k`` one-token continuations of every row; see the module docstring."""

    @abstractmethod
    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None:
        """Prepare rows: row i answers ``conversations[prompt_of_row[i]]`` and has no response yet."""

    @abstractmethod
    def score(self, candidates: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """``[B, k]`` token ids -> ``[B, k]`` rewards of (response so far + candidate)."""

    @abstractmethod
    def commit(self, column: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append each row's chosen candidate (column of the last ``score`` call, token id)."""


class ClassifierBranchScorer(BranchScorer):
    """Incremental branch scoring on a classifier reward (base model + linear ``score`` head).

    The reward sees the prompt through its own chat template (with the assistant turn opened)
    followed by the policy's response tokens as they are, so no text is re-tokenised.
    """

    def __init__(self, reward: Any, policy: Policy, counters: ComputeCounters) -> None:
        self.reward = reward
        self.policy = policy
        self.counters = counters
        self.model = reward.model
        self.base = getattr(self.model, self.model.base_model_prefix)
        self.head = self.model.score
        self.cache: Any = None
        # [B, S] 1 for real tokens of the prefix and response; S: the cache's length before the
        # candidates of the current step
        self.mask: torch.Tensor | None = None
        self.scored = False

    @staticmethod
    def supports(reward: RewardModel, policy: Policy) -> bool:
        """A classifier reward with a linear head whose tokenizer is the policy's vocabulary."""
        model = getattr(reward, "model", None)
        head = getattr(model, "score", None)
        prefix = getattr(model, "base_model_prefix", None)
        return (
            isinstance(head, torch.nn.Linear)
            and prefix is not None
            and hasattr(model, prefix)
            and hasattr(reward, "prefix_ids")
            and same_vocabulary(reward.tokenizer, policy.tokenizer)
        )

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None:
        prefixes = [self.reward.prefix_ids(c) for c in conversations]
        pad = self.reward.tokenizer.pad_token_id or 0
        prefill = prefill_left_padded(self.base, prefixes, pad, self.device)
        self.cache, mask = prefill.cache, prefill.mask
        self.counters.reward_calls += 1
        self.counters.reward_items += len(prefixes)
        rows = torch.as_tensor(list(prompt_of_row), dtype=torch.long, device=self.device)
        # k candidate columns live past the response: reserve them too
        if not expand_into_preallocated(self.cache, rows, max_new_tokens + 64):
            raise TypeError("incremental branch scoring needs a plain (non-sliding) KV cache")
        self.mask = mask[rows]

    def score(self, candidates: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        assert self.mask is not None
        truncate(self.cache, self.mask.shape[1])  # drop the columns of a scored-but-uncommitted step
        hidden = run_branches(self.base, candidates, self.cache, self.mask)
        with torch.inference_mode():
            values = self.head(hidden)[..., self.reward.label_index].float()
        self.counters.reward_calls += 1
        self.counters.reward_items += candidates.numel()
        self.scored = True
        return values

    def commit(self, column: torch.Tensor, tokens: torch.Tensor) -> None:
        """Keep the chosen candidate's keys/values as the next cache column (no forward pass)."""
        assert self.scored and self.mask is not None
        keep_branch(self.cache, self.mask.shape[1], column.to(self.device))
        ones = torch.ones((self.mask.shape[0], 1), dtype=self.mask.dtype, device=self.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        self.scored = False


class TextBranchScorer(BranchScorer):
    """Fallback: decode every branch to text and score it with ``reward.score`` (re-tokenised)."""

    def __init__(self, reward: RewardModel, policy: Policy, counters: ComputeCounters) -> None:
        self.reward = reward
        self.policy = policy
        self.counters = counters
        self.conversations: list[Conversation] = []
        self.responses: list[list[int]] = []

    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None:
        self.conversations = [conversations[p] for p in prompt_of_row]
        self.responses = [[] for _ in prompt_of_row]

    def score(self, candidates: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        rows, k = candidates.shape
        ids = candidates.tolist()
        live = alive.nonzero().flatten().tolist()  # finished rows are not scored
        texts = [self.policy.decode([*self.responses[r], ids[r][j]]) for r in live for j in range(k)]
        prompts = [self.conversations[r] for r in live for _ in range(k)]
        values = torch.zeros((rows, k), dtype=torch.float32, device=candidates.device)
        if texts:
            self.counters.reward_calls += 1
            self.counters.reward_items += len(texts)
            scores = self.reward.score(prompts, texts)
            values[alive] = torch.tensor(scores, dtype=torch.float32, device=candidates.device).view(-1, k)
        return values

    def commit(self, column: torch.Tensor, tokens: torch.Tensor) -> None:
        for response, token in zip(self.responses, tokens.tolist(), strict=True):
            response.append(token)
