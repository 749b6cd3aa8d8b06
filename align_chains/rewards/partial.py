"""Scoring the *partial* answers of a decoding batch, again and again as they grow (early rejection).

A ``PartialScorer`` follows a ``Batch`` through its decisions:

- ``start(conversations, prompt_of_row, max_new_tokens)``: rows begin with empty answers;
- ``score(batch) -> list[float]``: the reward of every row's answer so far;
- ``select(rows)``: keep, reorder or duplicate rows, as ``Batch.select`` did.

``TextPartialScorer`` decodes the answers and calls ``reward.score`` (any reward; the reward
re-reads the prompt and the whole answer every time). ``JudgePartialScorer`` is the incremental
path for an LLM judge that shares the policy's vocabulary (the policy judging itself): it keeps
the judge's KV cache over "judge prompt up to the response + answer so far", so a decision feeds
only the tokens generated since the last one, followed by the judge's closing question, reads
log P(yes) − log P(no), and cuts the closing question off the cache again. The answer tokens
are the policy's own, so no text is re-tokenised; scores match ``JudgeReward.score`` up to the
tokenizer merging characters differently at the answer's edges. ``exact`` tells the caller
whether scores are the reward's own (True for text scoring), so it can re-score final answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Batch
from align_chains.engine.forward import prefill_left_padded, run
from align_chains.engine.kv_cache import expand_into_preallocated
from align_chains.errors import InvalidInputError, RewardError
from align_chains.models.chat import Conversation
from align_chains.models.policy import Policy
from align_chains.rewards.base import RewardModel
from align_chains.rewards.incremental import same_vocabulary
from align_chains.rewards.judge import JudgeReward
from align_chains.rewards.soft import split_template


class PartialScorer(ABC):
    """Scores every row's answer so far; see the module docstring."""

    exact: bool = True

    @abstractmethod
    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None: ...

    @abstractmethod
    def score(self, batch: Batch) -> list[float]: ...

    def select(self, rows: torch.Tensor) -> None:  # noqa: B027 - stateless scorers need nothing
        """Follow ``Batch.select(rows)``."""


class TextPartialScorer(PartialScorer):
    """Decode the answers so far and score them with ``reward.score`` (one batched call)."""

    def __init__(self, reward: RewardModel, policy: Policy, counters: ComputeCounters) -> None:
        self.reward, self.policy, self.counters = reward, policy, counters
        self.conversations: list[Conversation] = []

    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None:
        self.conversations = list(conversations)

    def score(self, batch: Batch) -> list[float]:
        from align_chains.engine.decoder import Decoder

        texts = [c.text for c in Decoder(self.policy, ComputeCounters()).completions(batch)]
        self.counters.reward_calls += 1
        self.counters.reward_items += len(texts)
        return self.reward.score([self.conversations[int(p)] for p in batch.prompt_index.tolist()], texts)


class JudgePartialScorer(PartialScorer):
    """Incremental judge scoring over the judge's own KV cache (see the module docstring)."""

    exact = False

    def __init__(self, reward: JudgeReward, policy: Policy, counters: ComputeCounters) -> None:
        self.reward, self.policy, self.counters = reward, policy, counters
        self.model = reward.judge.model
        self.device = reward.judge.device
        self.eos = torch.tensor(policy.eos_token_ids or (-1,), device=self.device)
        self.suffix: torch.Tensor | None = None
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, S]: 1 for real judge-prompt and answer tokens
        self.fed = 0  # answer steps already in the cache

    @staticmethod
    def supports(reward: RewardModel, policy: Policy) -> bool:
        """A judge reading the policy's own token ids (same vocabulary)."""
        return isinstance(reward, JudgeReward) and same_vocabulary(reward.judge.tokenizer, policy.tokenizer)

    def _encode(self, text: str) -> list[int]:
        return self.reward.judge.tokenizer(text, add_special_tokens=False)["input_ids"]

    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None:
        parts = [split_template(lambda text, c=c: self.reward.judge_text(c, text)) for c in conversations]
        suffixes = {after for _, after in parts}
        assert len(suffixes) == 1, "the judge prompt ends the same way for every question"
        self.suffix = torch.tensor(self._encode(suffixes.pop()), device=self.device)
        prefixes = [self._encode(before) for before, _ in parts]
        # the base model: no vocabulary projection over the prefix
        prefill = prefill_left_padded(
            self.model.base_model, prefixes, self.reward.judge.pad_token_id, self.device
        )
        self.cache, mask = prefill.cache, prefill.mask
        self.counters.reward_calls += 1
        self.counters.reward_items += len(prefixes)
        rows = torch.as_tensor(list(prompt_of_row), dtype=torch.long, device=self.device)
        if not expand_into_preallocated(self.cache, rows, max_new_tokens + len(self.suffix)):
            self.cache.batch_select_indices(rows)
        self.mask = mask[rows]
        self.fed = 0

    def score(self, batch: Batch) -> list[float]:
        assert self.suffix is not None and self.mask is not None
        rows = batch.size
        new = batch.tokens[:, self.fed : batch.steps].to(self.device)
        steps = torch.arange(self.fed, batch.steps, device=self.device)
        # an answer token is real when the row had produced it and it is not the EOS that ended it
        valid = (steps[None, :] < batch.num_tokens.to(self.device)[:, None]) & ~torch.isin(new, self.eos)
        suffix = self.suffix[None, :].expand(rows, -1)
        block = torch.cat([new, suffix], dim=1)
        block_mask = torch.cat([valid.long(), torch.ones_like(suffix)], dim=1)
        try:
            out = run(
                self.model,
                block,
                cache=self.cache,
                past_mask=self.mask,
                new_mask=block_mask,
                logits_to_keep=1,
            )
        except Exception as exc:
            raise RewardError(
                f"Reward {self.reward.name!r} raised {type(exc).__name__} while scoring {rows} partial "
                f"answers incrementally: {exc}"
            ) from exc
        self.cache = out.cache
        self.cache.crop(-int(self.suffix.shape[0]))  # drop the closing question, keep the answer
        self.mask = torch.cat([self.mask, valid.long()], dim=1)
        self.fed = batch.steps
        self.counters.reward_calls += 1
        self.counters.reward_items += rows
        return self.reward._log_odds(out.logits[:, -1]).tolist()

    def select(self, rows: torch.Tensor) -> None:
        assert self.mask is not None
        index = rows.to(self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]


def partial_scorer(
    reward: RewardModel, policy: Policy, counters: ComputeCounters, mode: str = "auto"
) -> PartialScorer:
    """The incremental scorer when the reward has one (``mode`` 'auto' or 'incremental'), else text.

    A reward with its own rule for partial answers offers ``reward.partial_scorer(policy,
    counters)`` (``rewards/prefix.py``); that is used in every mode but 'text'.
    """
    own = getattr(reward, "partial_scorer", None)
    if mode != "text" and own is not None:
        return own(policy, counters)
    if mode != "text" and JudgePartialScorer.supports(reward, policy):
        return JudgePartialScorer(reward, policy, counters)  # type: ignore[arg-type]
    if mode == "incremental":
        raise InvalidInputError(
            f"Reward {reward.name!r} has no incremental partial-scoring path (an LLM judge sharing the "
            "policy's vocabulary has one); use partial_scoring='text' or 'auto'."
        )
    return TextPartialScorer(reward, policy, counters)
