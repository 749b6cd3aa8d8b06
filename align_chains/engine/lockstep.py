"""Several (model, prompt) views of the same responses, decoded token for token in lockstep.

Guided decoding reads the next-token distribution of one response under several models or
prompts: the policy, a tuned and an untuned guide model, or the policy itself with and without
a principle in its system prompt. A ``Lockstep`` holds one ``Batch`` per distinct model; the
views of one model are row blocks of that model's batch, so the policy with and without a
principle runs in ONE forward per token (shared weights, separate caches). Identical views
(the untuned view of a principle guide is the policy's own prompt) share their rows.

Every view has the same B rows: ``append`` feeds the same token to all views, ``select``
keeps/reorders/duplicates the same rows in every batch, caches included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Batch, Completion, Decoder
from align_chains.engine.sampling import SamplingParams
from align_chains.models.policy import Policy


@dataclass
class View:
    """One way of reading the responses: a model and a rendered prompt per prompt index."""

    policy: Policy
    prompts: list[list[int]]


class Lockstep:
    """Decode the same rows under several views; view 0 is the one whose text is returned."""

    def __init__(
        self,
        views: Sequence[View],
        rows: Sequence[int],
        params: SamplingParams,
        counters: ComputeCounters,
    ) -> None:
        self.counts = list(rows)
        self.size = sum(self.counts)
        groups: list[tuple[Policy, list[list[list[int]]]]] = []
        self.slot_of_view: list[tuple[int, int]] = []  # (group, block)
        for view in views:
            g = next((i for i, (policy, _) in enumerate(groups) if policy is view.policy), None)
            if g is None:
                groups.append((view.policy, []))
                g = len(groups) - 1
            blocks = groups[g][1]
            s = next((i for i, prompts in enumerate(blocks) if prompts == view.prompts), None)
            if s is None:
                blocks.append(view.prompts)
                s = len(blocks) - 1
            self.slot_of_view.append((g, s))
        self.decoders = [Decoder(policy, counters) for policy, _ in groups]
        # prompt tokens each prompt index costs across every model and distinct view
        self.prompt_tokens = [
            sum(len(block[p]) for _, blocks in groups for block in blocks) for p in range(len(self.counts))
        ]
        self.blocks = [len(blocks) for _, blocks in groups]
        self.batches: list[Batch] = [
            decoder.start([ids for block in blocks for ids in block], self.counts * len(blocks), params)
            for decoder, (_, blocks) in zip(self.decoders, groups, strict=True)
        ]

    # -- reading -------------------------------------------------------------------------
    @property
    def base(self) -> Batch:
        """The batch holding view 0 (its first block is view 0 when view 0 comes first)."""
        return self.batches[self.slot_of_view[0][0]]

    @property
    def done(self) -> bool:
        return self.base.done

    @property
    def finished(self) -> torch.Tensor:
        return self.rows_of(self.base.finished, 0)

    def rows_of(self, value: torch.Tensor, view: int) -> torch.Tensor:
        """``view``'s rows of a tensor laid out like its decoder's batch (views may share one)."""
        _, s = self.slot_of_view[view]
        return value[s * self.size : (s + 1) * self.size]

    def logits(self, view: int) -> torch.Tensor:
        """Next-token logits ``[B, V]`` of every row under ``view``."""
        g, _ = self.slot_of_view[view]
        return self.rows_of(self.decoders[g].logits(self.batches[g]), view)

    def logprobs(self, view: int) -> torch.Tensor:
        """``[B, T]`` log-probabilities (temperature 1) of each committed token under ``view``."""
        g, _ = self.slot_of_view[view]
        return self.rows_of(self.batches[g].logprobs, view)

    def completions(self) -> list[Completion]:
        """View 0's rows decoded to text."""
        g, s = self.slot_of_view[0]
        return self.decoders[g].completions(self.batches[g])[s * self.size : (s + 1) * self.size]

    # -- moving ----------------------------------------------------------------------------
    def append(self, tokens: torch.Tensor) -> None:
        """Commit one token per row, the same in every view."""
        for decoder, batch, blocks in zip(self.decoders, self.batches, self.blocks, strict=True):
            decoder.append(batch, tokens.to(batch.tokens.device).repeat(blocks))

    def select(self, rows: torch.Tensor) -> None:
        """Keep, reorder or duplicate rows in every view, KV caches included (no recompute)."""
        rows = rows.long()
        for batch, blocks in zip(self.batches, self.blocks, strict=True):
            index = rows.to(batch.tokens.device)
            batch.select(torch.cat([index + s * self.size for s in range(blocks)]))
        self.size = int(rows.numel())
