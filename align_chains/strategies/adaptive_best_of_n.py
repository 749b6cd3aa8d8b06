"""Prompt-adaptive Best-of-N: spend a batch's sample budget where another sample is worth most.

Stage 1 samples d = exploration * budget responses per prompt. Each prompt's rewards give a
kernel-density estimate of its reward distribution, hence of how much another sample would
raise its best reward; the remaining (budget - d) * K samples go greedily to the prompts with
the largest expected gain (``allocation.py``). Stage 2 samples them and every prompt returns
the best of all its samples. Both stages are one batched decode across prompts, and stage 2
reuses stage 1's prompt caches: no prompt is prefilled twice.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from align_chains.engine.decoder import Batch
from align_chains.engine.llama_cpp import LlamaCppBatch, decoder_for
from align_chains.engine.sampling import SamplingParams, make_generator
from align_chains.strategies.allocation import allocate, exploration_size
from align_chains.strategies.base import (
    SearchRun,
    Strategy,
    StrategyResult,
    register_strategy,
    score_texts,
)
from align_chains.strategies.best_of_n import best_per_prompt
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.declarations import Bound, Cost

_STAGE2_SEED_OFFSET = 1_000_003  # stage 2 must not replay stage 1's random draws


@register_strategy
class AdaptiveBestOfN(Strategy):
    """Best-of-N with the sample budget allocated across a batch of prompts.

    ``budget`` is the average number of samples per prompt; the batch spends exactly
    ``budget * K``. With one prompt (or a budget below 2) this is uniform Best-of-budget.

    Args:
        budget: Average samples per prompt (B); the batch spends ``budget × prompts``.
        exploration: Fraction of the budget sampled up front for every prompt (paper: 0.75).
        mc_draws: Monte Carlo draws per expected-maximum estimate in the allocation.

    Examples:
        >>> from align_chains import AdaptiveBestOfN, load_policy, load_reward
        >>> strategy = AdaptiveBestOfN(budget=8)
        >>> prompts = ["Name a fruit.", "Write a haiku about rain.", "Explain DNS briefly."]
        >>> results = strategy.run_batch(prompts, load_policy(), load_reward())  # doctest: +SKIP
        >>> [r.details["extra_samples"] for r in results]  # doctest: +SKIP
    """

    name: ClassVar[str] = "adaptive-best-of-n"
    aliases: ClassVar[tuple[str, ...]] = ("adaptive", "adaptive_best_of_n")
    card: ClassVar[StrategyCard | None] = StrategyCard(
        "Prompt-adaptive Best-of-N",
        "spreads a sample budget over the prompts of a batch by how much another sample is worth",
        "the same total samples as uniform Best-of-B",
        "you align batches of prompts of mixed difficulty; on the [task map](task_map.md) it was within "
        "noise of uniform Best-of-N at the same budget pooled (ahead on one family at 16x, behind on "
        "it at 4x), at up to 1.6 times the seconds",
        page="adaptive_best_of_n.md",
        usage='BestOfNChatModel(allocation="adaptive", budget=B)',
    )
    runs_on_llama_cpp: ClassVar[bool] = True  # two sampling rounds, the second on the prompts' cells
    one_prompt_chat_model: ClassVar[bool] = False  # BestOfNChatModel(allocation="adaptive") runs it

    budget: int = Field(8, ge=1, description="Average samples per prompt (B).")
    exploration: float = Field(
        0.75, gt=0.0, le=1.0, description="Fraction of the budget sampled up front (paper: 0.75)."
    )
    mc_draws: int = Field(1024, ge=16, description="Monte Carlo draws per expected-max estimate.")

    work_bounds: ClassVar[tuple[Bound, ...]] = (Bound("budget", 64),)

    def cost(self, params: SamplingParams) -> Cost:
        """budget samples per prompt in two stages, the second restarted from the first's cache."""
        t, b = params.max_new_tokens, self.budget
        return Cost(b * t, 2 + 2 * t, b, b, factors=("budget", "max_tokens"))

    def batch_key(self) -> None:
        """Never batched with other requests: it moves samples between the prompts of a batch."""
        return None

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        policy, params, progress, counters = run.policy, run.params, run.progress, run.counters
        k = run.num_prompts
        d = exploration_size(self.budget, self.exploration, k)
        decoder = decoder_for(policy, counters)
        completions, scores, stage = [], [], []
        run.partial = lambda: (
            best_per_prompt(self.name, completions, None, counters, k) if completions else None
        )

        def sample_round(batch: Batch | LlamaCppBatch, seed: int | None, label: int) -> None:
            """Decode the batch to the end, score it in one call, and record the round."""
            decoder.extend(
                batch, generator=make_generator(seed, policy.device), on_step=lambda _: progress.advance()
            )
            done = decoder.completions(batch)
            texts, convs = [c.text for c in done], [run.conversations[c.prompt_index] for c in done]
            completions.extend(done)
            scores.extend(score_texts(run.reward, convs, texts, counters, progress))
            stage.extend([label] * len(done))

        # stage 1: d samples for every prompt, one batch
        progress.stage(f"exploring: {d * k} samples", params.max_new_tokens)
        batch = decoder.start(run.token_ids, d, params)
        sample_round(batch, params.seed, 1)
        explored = [
            [s for c, s in zip(completions, scores, strict=True) if c.prompt_index == p] for p in range(k)
        ]

        # allocate the rest greedily by expected gain
        extra = allocate(explored, self.budget, self.mc_draws, np.random.default_rng(params.seed))

        # stage 2: the allocation, one batch, from stage 1's prompt caches
        if sum(extra):
            progress.stage(f"allocating: {sum(extra)} samples", params.max_new_tokens)
            seed2 = None if params.seed is None else params.seed + _STAGE2_SEED_OFFSET
            sample_round(decoder.restart(batch, extra), seed2, 2)
        details = [
            {
                "exploration_samples": d,
                "extra_samples": extra[p],
                "exploration_rewards": explored[p],
            }
            for p in range(k)
        ]
        # completions are in round order, so a prompt's stage-1 rows come before its stage-2
        # rows and ties favour exploration samples
        return best_per_prompt(
            self.name,
            completions,
            scores,
            counters,
            k,
            row_info=[{"stage": label} for label in stage],
            details=details,
        )
