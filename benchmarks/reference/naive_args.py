"""REFERENCE ONLY (tests and benchmarks): ARGS branch scoring the way the authors' code does it.

For every candidate at every token, one full reward-model forward over prompt + the whole
response so far + the candidate, with no cache: O(k * t) reward tokens per step. It scores the
same token sequences as ``ClassifierBranchScorer``, so ARGS with either scorer must pick the
same tokens; the benchmark measures how much the incremental scorer saves. Do not use it to
serve requests.

    naive = NaiveClassifierScorer(reward, counters)
    RewardGuided(k=10).run_batch(prompts, policy, reward, params, scorer=naive)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from align_chains.engine.counters import ComputeCounters
from align_chains.models.chat import Conversation
from align_chains.rewards.incremental import BranchScorer


class NaiveClassifierScorer(BranchScorer):
    """k full forwards per token (one per candidate, rows batched), recomputing everything."""

    def __init__(self, reward: Any, counters: ComputeCounters) -> None:
        self.reward = reward
        self.model = reward.model
        self.base = getattr(self.model, self.model.base_model_prefix)
        self.counters = counters
        self.sequences: list[list[int]] = []

    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None:
        prefixes = [self.reward.prefix_ids(c) for c in conversations]
        self.sequences = [list(prefixes[p]) for p in prompt_of_row]

    def score(self, candidates: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        device = self.model.get_input_embeddings().weight.device
        rows, k = candidates.shape
        width = max(len(s) for s in self.sequences) + 1
        pad = self.reward.tokenizer.pad_token_id or 0
        values = torch.empty((rows, k), dtype=torch.float32)
        for j in range(k):
            ids = torch.full((rows, width), pad, dtype=torch.long)
            mask = torch.zeros((rows, width), dtype=torch.long)
            for r, seq in enumerate(self.sequences):
                full = [*seq, int(candidates[r, j])]
                ids[r, width - len(full) :] = torch.tensor(full)
                mask[r, width - len(full) :] = 1
            with torch.inference_mode():
                out = self.base(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
                )
                head = self.model.score(out.last_hidden_state[:, -1])
            values[:, j] = head[:, self.reward.label_index].float().cpu()
            self.counters.reward_calls += 1
            self.counters.reward_items += rows
        return values.to(candidates.device)

    def commit(self, column: torch.Tensor, tokens: torch.Tensor) -> None:
        for seq, token in zip(self.sequences, tokens.tolist(), strict=True):
            seq.append(token)
