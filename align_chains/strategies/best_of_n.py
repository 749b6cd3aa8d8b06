"""Best-of-N: sample N responses in one prefix-shared batch, return the highest-reward one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import Field

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Completion
from align_chains.engine.llama_cpp import decoder_for
from align_chains.engine.sampling import SamplingParams
from align_chains.strategies.base import (
    SearchRun,
    Strategy,
    StrategyResult,
    register_strategy,
    score_completions,
)
from align_chains.strategies.candidates import best_index, candidate_from, chosen_result
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.declarations import Bound, Cost


@register_strategy
class BestOfN(Strategy):
    """Sample ``n`` candidates per prompt and keep the one the reward scores highest.

    All prompts of a batch are prefilled together, each once, and every candidate of every
    prompt is decoded in the same batch; all candidates are scored in one reward call.
    Ties go to the earliest candidate.

    Args:
        n: Candidates sampled per prompt.

    Examples:
        >>> from align_chains import BestOfN, SamplingParams, load_policy, load_reward
        >>> BestOfN(n=4).n
        4
        >>> params = SamplingParams(max_new_tokens=64)
        >>> result = BestOfN(n=4).run("Hi!", load_policy(), load_reward(), params)  # doctest: +SKIP
        >>> result.text, result.reward, len(result.candidates), result.counters.as_dict()  # doctest: +SKIP
    """

    name: ClassVar[str] = "best-of-n"
    aliases: ClassVar[tuple[str, ...]] = ("bon", "best_of_n", "bestofn")
    card: ClassVar[StrategyCard | None] = StrategyCard(
        "Best-of-N",
        "samples n answers in one batch, keeps the one the reward prefers",
        "n candidates decoded as one batch, one reward call",
        "the default: any reward (even a Python function), any policy, scales with n; on the "
        "[task map](task_map.md) it never lost badly and was the best on exact length (16x tokens)",
        page="best_of_n.md",
    )

    n: int = Field(4, ge=1, description="Candidates sampled per prompt.")

    runs_on_llama_cpp: ClassVar[bool] = True  # only samples: a llama.cpp policy decodes the batch

    work_bounds: ClassVar[tuple[Bound, ...]] = (Bound("n", 64),)

    def cost(self, params: SamplingParams) -> Cost:
        """n rows from one prefill, one reward call over the n answers."""
        t = params.max_new_tokens
        return Cost(self.n * t, 1 + t, self.n, self.n, factors=("n", "max_tokens"))

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        num = run.num_prompts
        run.progress.stage(f"generating {self.n * num} candidates", run.params.max_new_tokens)
        completions = decoder_for(run.policy, run.counters).generate(
            run.token_ids, self.n, run.params, on_step=lambda _batch: run.progress.advance()
        )
        run.partial = lambda: best_per_prompt(self.name, completions, None, run.counters, num)
        scores, read = score_completions(
            run.reward, run.conversations, completions, run.counters, run.progress
        )
        return best_per_prompt(self.name, completions, scores, run.counters, num, reward_tokens=read)


def best_per_prompt(
    strategy: str,
    completions: Sequence[Completion],
    scores: Sequence[float] | None,
    counters: ComputeCounters,
    num_prompts: int,
    row_info: Sequence[dict[str, Any]] | None = None,
    details: Sequence[dict[str, Any]] | None = None,
    reward_tokens: Sequence[int] | None = None,
) -> list[StrategyResult]:
    """Group scored completions by prompt and pick each prompt's best (ties: earliest).

    ``scores=None`` means the reward failed: candidates keep ``reward=None`` and the result is
    flagged. ``row_info`` adds fields to each candidate's trace record; ``details`` adds
    per-prompt entries to the result; ``reward_tokens`` (per completion) the tokens the reward
    model read, summed per prompt.
    """
    results = []
    for p in range(num_prompts):
        rows = [i for i, c in enumerate(completions) if c.prompt_index == p]
        candidates = [
            candidate_from(
                completions[i], None if scores is None else scores[i], row_info[i] if row_info else None
            )
            for i in rows
        ]
        best = best_index([c.reward for c in candidates])
        best = 0 if best is None else best  # the reward failed: nothing scored, the first stands
        own = replace(
            counters,
            prompt_tokens=completions[rows[0]].prompt_tokens,
            generated_tokens=sum(completions[i].generated_tokens for i in rows),
            reward_items=len(rows) if scores is not None else 0,
            reward_tokens=sum(reward_tokens[i] for i in rows) if reward_tokens else 0,
        )
        trace = [
            {
                "candidate": j,
                **c.meta,
                "reward": c.reward,
                "tokens": c.num_tokens,
                "mean_logprob": sum(c.logprobs) / max(len(c.logprobs), 1),
                "chosen": j == best,
            }
            for j, c in enumerate(candidates)
        ]
        results.append(
            chosen_result(
                strategy,
                candidates,
                best,
                prompt_tokens=completions[rows[0]].prompt_tokens,
                counters=own,
                trace=trace,
                flags={} if scores is not None else {"reward_failed": True},
                details={"samples": len(rows), **(details[p] if details else {})},
            )
        )
    return results
