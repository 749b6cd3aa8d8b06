"""Early-rejection Best-of-N (Speculative Rejection, Sun et al. 2024, arXiv 2410.20290).

Best-of-N spends most of its tokens on candidates that the reward would have ranked low after
their first few tokens. Early rejection starts the same ``n`` rows from one prefill, and at
decision points scores the *partial* answers with the reward and drops the lowest-scoring
fraction ``rejection`` of each prompt's rows. Survivors keep decoding from their own KV cache
(``Batch.select``: no re-prefill, ever; the authors' code turns survivors back into text and
prefills them again every round). The answer is the best *finished* candidate.

Decision schedule:

- ``decision_every=m``: every m generated tokens;
- ``decision_every="memory"``: the paper's schedule: decide when the rows' KV cache (prompt +
  generated tokens, summed over rows) reaches ``memory_tokens``. Rejection shrinks the batch,
  so each next decision comes later.

Ranking follows the reference: at a decision every row still in the batch is scored (rows that
finished since the last decision with their final text), the top ``round((1 - rejection) ·
rows)`` of each prompt are kept (at least one), and kept rows that are unfinished continue.
A reward model's scores rarely tie; an exact prefix rule's often do (most 8-token prefixes use
no keyword yet), and then the cut falls by row order, i.e. at random. ``ties="keep"`` keeps
every row tied with the last kept one: a decision the reward cannot make drops nothing, so the
tokens spent vary with how informative the prefixes are (at most Best-of-n's).
Every finished row stays a candidate whether or not it was kept, since it costs nothing more.
Finished rows leave the batch at a decision, so they stop riding along as padding.

With ``rejection=0`` nothing is ever scored or dropped: the run is plain Best-of-N, draw for draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Batch, Completion, Decoder
from align_chains.engine.sampling import SamplingParams, make_generator
from align_chains.errors import RewardError
from align_chains.models.chat import Conversation
from align_chains.models.policy import Policy
from align_chains.rewards.base import RewardModel
from align_chains.rewards.partial import partial_scorer
from align_chains.strategies.base import (
    SearchRun,
    Strategy,
    StrategyResult,
    register_strategy,
    score_completions,
)
from align_chains.strategies.best_of_n import best_per_prompt
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.declarations import Bound, Cost, MemoryPlan, MemoryRequest


@dataclass
class _Pool:
    """Finished candidates and the per-prompt bookkeeping a run accumulates."""

    num_prompts: int
    completions: list[Completion] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    info: list[dict[str, Any]] = field(default_factory=list)
    rejected_tokens: list[int] = field(default_factory=list)  # per prompt: tokens of dropped rows
    rejected_rows: list[int] = field(default_factory=list)
    scored_items: list[int] = field(default_factory=list)  # per prompt: partial + final scorings
    reward_tokens: list[int] = field(default_factory=list)  # per prompt: tokens the final scoring read

    def __post_init__(self) -> None:
        self.rejected_tokens = [0] * self.num_prompts
        self.rejected_rows = [0] * self.num_prompts
        self.scored_items = [0] * self.num_prompts
        self.reward_tokens = [0] * self.num_prompts

    def add(self, completion: Completion, score: float | None, info: dict[str, Any]) -> None:
        self.completions.append(completion)
        self.scores.append(score)
        self.info.append(info)


@register_strategy
class EarlyRejectionBestOfN(Strategy):
    """Best-of-``n`` that drops the lowest-reward ``rejection`` fraction of partial answers as it decodes."""

    name: ClassVar[str] = "early-rejection"
    aliases: ClassVar[tuple[str, ...]] = ("speculative-rejection", "early_rejection")
    card: ClassVar[StrategyCard | None] = StrategyCard(
        "Early-rejection Best-of-N (Speculative Rejection)",
        "starts n answers, scores the partial answers every m tokens and drops the lowest fraction α",
        "one prefill, fewer tokens than Best-of-n (0.27× at α = 0.75, m = 8 here), a reward call per "
        "decision",
        "the reward tells good partial answers apart early; with the exact prefix rules of the "
        "[task map](task_map.md) it matched Best-of-N at equal tokens (pooled, 30 instances a family), "
        "since at 8 tokens they score most answers alike; fewer seconds than Best-of-N at 16x",
        page="early_rejection.md",
        usage="BestOfNChatModel(rejection=α, decision_every=m)",
    )

    n: int = Field(32, ge=1, description="Candidates started per prompt (from one shared prefill).")
    rejection: float = Field(
        0.75, ge=0.0, lt=1.0, description="Fraction of each prompt's rows dropped at every decision (α)."
    )
    decision_every: int | Literal["memory"] = Field(
        8,
        description="Tokens between decisions (m), or 'memory' for the paper's memory-driven schedule.",
    )
    memory_tokens: int = Field(
        4096, ge=1, description="'memory' schedule: KV-cache tokens (all rows) that trigger a decision."
    )
    partial_scoring: Literal["auto", "incremental", "text"] = Field(
        "auto", description="Partial answers: the reward's incremental path when it has one, else text."
    )
    ties: Literal["order", "keep"] = Field(
        "order",
        description="Rows tied with the last kept row: 'order' drops them by row order (the reference); "
        "'keep' keeps them, so only rows the reward scores strictly lower are dropped.",
    )

    @field_validator("decision_every")
    @classmethod
    def _positive_interval(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"decision_every must be a positive number of tokens or 'memory'; got {value}.")
        return value

    # -- its work ------------------------------------------------------------------------
    work_bounds: ClassVar[tuple[Bound, ...]] = (Bound("n", 64),)

    def cost(self, params: SamplingParams) -> Cost:
        """At most Best-of-n's tokens (rejection only removes rows); every row's partial answer
        may be scored at each decision ('memory': taken as every token), every finished one once more."""
        t, n = params.max_new_tokens, self.n
        every = self.decision_every if isinstance(self.decision_every, int) else 1
        return Cost(n * t, 1 + t, n * (1 + math.ceil(t / every)), n, factors=("n", "max_tokens"))

    def memory(self, request: MemoryRequest) -> MemoryPlan:
        """Best-of-n's phases; a judge keeps its own cache for every row (``JudgePartialScorer``):
        prompt, answer and its closing question."""
        plan = super().memory(request)
        judge = request.reward
        if judge.shape is None or judge.kind != "judge":
            return plan
        text = judge.text_tokens(request.width, request.new)
        return plan.with_reward(plan.rows * text * judge.shape.kv_bytes_per_token)

    # -- schedule ------------------------------------------------------------------------
    def _tokens_to_decision(self, batch: Batch) -> int:
        if self.decision_every != "memory":
            every = int(self.decision_every)
            return every - batch.steps % every
        held = int((batch.prompt_lengths + batch.steps).sum())
        missing = self.memory_tokens - held
        return max(1, math.ceil(missing / batch.size))

    def _keep_count(self, rows: int) -> int:
        """Rows of one prompt kept at a decision (the reference's rounding, at least one)."""
        return max(1, round((1.0 - self.rejection) * rows))

    def _can_drop(self, batch: Batch) -> bool:
        """False once no prompt would lose a row at a decision (then scoring partials is wasted)."""
        rows = torch.bincount(batch.prompt_index).tolist()
        return any(self._keep_count(r) < r for r in rows if r > 0)

    # -- the run -------------------------------------------------------------------------
    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        run.progress.stage(f"generating {self.n * run.num_prompts} candidates", run.params.max_new_tokens)
        state = _Run(self, run.policy, run.reward, run.conversations, run.token_ids, run.params, run.counters)
        run.partial = lambda: state.results(scored=False)
        while state.batch is not None and not state.batch.done:
            batch = state.batch
            steps = self._tokens_to_decision(batch) if self._can_drop(batch) else None
            state.decoder.extend(batch, steps, state.generator, on_step=lambda _b: run.progress.advance())
            if not batch.done:
                state.decide()
        state.finish()
        return state.results(scored=True)


class _Run:
    """One early-rejection run: the batch, the partial scorer following it, the finished pool."""

    def __init__(
        self,
        strategy: EarlyRejectionBestOfN,
        policy: Policy,
        reward: RewardModel,
        conversations: Sequence[Conversation],
        token_ids: Sequence[Sequence[int]],
        params: SamplingParams,
        counters: ComputeCounters,
    ) -> None:
        self.strategy, self.reward, self.conversations, self.counters = (
            strategy,
            reward,
            conversations,
            counters,
        )
        self.decoder = Decoder(policy, counters)
        self.batch: Batch | None = self.decoder.start(token_ids, strategy.n, params)
        self.generator = make_generator(params.seed, policy.device)
        self.scorer = partial_scorer(reward, policy, counters, strategy.partial_scoring)
        self.scorer_started = False
        self.max_new_tokens = params.max_new_tokens
        device = self.batch.tokens.device
        self.origin = torch.arange(self.batch.size, device=device) % strategy.n  # row within its prompt
        self.survived = torch.zeros_like(self.origin)
        self.pool = _Pool(len(conversations))
        self.decisions: list[dict[str, Any]] = []

    def decide(self) -> None:
        """Score every row's answer so far (one batched call), keep each prompt's top rows."""
        batch = self.batch
        assert batch is not None
        if not self.scorer_started:  # the first decision prefills the scorer (judge prompts)
            self.scorer.start(self.conversations, batch.prompt_index.tolist(), self.max_new_tokens)
            self.scorer_started = True
        try:
            scores = self.scorer.score(batch)
        except RewardError:  # keep every row, unscored, so the caller still gets answers
            batch.finished |= True
            self._bank_finished(None)
            self.batch = None
            raise
        prompt_of_row = batch.prompt_index.tolist()
        for p in prompt_of_row:
            self.pool.scored_items[p] += 1
        values = torch.tensor(scores, dtype=torch.float32)
        finished = batch.finished.cpu()
        keep = torch.zeros(batch.size, dtype=torch.bool)
        for p in sorted(set(prompt_of_row)):  # per prompt, at decision points only
            rows = (batch.prompt_index.cpu() == p).nonzero().flatten()
            count = self.strategy._keep_count(len(rows))
            order = rows[torch.argsort(values[rows], descending=True, stable=True)]
            if self.strategy.ties == "keep":  # and every row tied with the last one kept
                count = int((values[rows] >= values[order[count - 1]]).sum())
            keep[order[:count]] = True
            dropped = order[count:]
            dropped_alive = dropped[~finished[dropped]]
            self.pool.rejected_rows[p] += len(dropped_alive)
            self.pool.rejected_tokens[p] += int(batch.num_tokens.cpu()[dropped_alive].sum())
            self.decisions.append(
                {
                    "event": "decision",
                    "prompt": p,
                    "step": batch.steps,
                    "rows": len(rows),
                    "kept": count,
                    "threshold": float(values[order[count - 1]]),
                    "best_partial": float(values[order[0]]),
                }
            )
        self._bank_finished(scores if self.scorer.exact else None)
        continuing = (keep & ~finished).nonzero().flatten().to(batch.tokens.device)
        if continuing.numel() == 0:
            self.batch = None
            return
        batch.select(continuing)
        self.scorer.select(continuing)
        self.origin, self.survived = self.origin[continuing], self.survived[continuing] + 1

    def _bank_finished(self, scores: Sequence[float] | None) -> None:
        """Move rows that ended into the candidate pool (with their score when it is the reward's own)."""
        batch = self.batch
        assert batch is not None
        rows = batch.finished.nonzero().flatten().tolist()
        if not rows:
            return
        texts = self.decoder.completions(batch)
        for row in rows:
            self.pool.add(
                texts[row],
                None if scores is None else scores[row],
                {
                    "row": int(self.origin[row]),
                    "decisions_survived": int(self.survived[row]),
                    "step": batch.steps,
                },
            )

    def finish(self) -> None:
        """Bank the rows that ran to the end; score every unscored candidate in one batched call."""
        if self.batch is not None:
            self.batch.finished |= True
            self._bank_finished(None)
            self.batch = None
        todo = [i for i, s in enumerate(self.pool.scores) if s is None]
        if not todo:
            return
        completions = [self.pool.completions[i] for i in todo]
        scores, read = score_completions(self.reward, self.conversations, completions, self.counters)
        for i, score, tokens in zip(todo, scores, read, strict=True):
            self.pool.scores[i] = score
            self.pool.scored_items[self.pool.completions[i].prompt_index] += 1
            self.pool.reward_tokens[self.pool.completions[i].prompt_index] += tokens

    def results(self, scored: bool) -> list[StrategyResult]:
        """Each prompt's best finished candidate, with its own share of the work."""
        pool = self.pool
        if self.batch is not None:  # a failed run: its unfinished rows are candidates too
            self.batch.finished |= True
            self._bank_finished(None)
            self.batch = None
        order = sorted(
            range(len(pool.completions)),
            key=lambda i: (pool.completions[i].prompt_index, pool.info[i]["row"]),
        )
        completions = [pool.completions[i] for i in order]
        info = [pool.info[i] for i in order]
        scores = [pool.scores[i] for i in order]
        complete = scored and all(s is not None for s in scores)
        details = [
            {
                "started": self.strategy.n,
                "rejected": pool.rejected_rows[p],
                "decisions": sum(1 for d in self.decisions if d["prompt"] == p),
                "partial_scoring": "incremental" if not self.scorer.exact else "text",
            }
            for p in range(pool.num_prompts)
        ]
        results = best_per_prompt(
            self.strategy.name,
            completions,
            [float(s) for s in scores if s is not None] if complete else None,
            self.counters,
            pool.num_prompts,
            info,
            details,
        )
        out = []
        for p, result in enumerate(results):
            own = replace(
                result.counters,
                generated_tokens=result.counters.generated_tokens + pool.rejected_tokens[p],
                reward_items=pool.scored_items[p],
                reward_tokens=pool.reward_tokens[p],
            )
            trace = [d for d in self.decisions if d["prompt"] == p] + [
                {"event": "candidate", **record} for record in result.trace
            ]
            out.append(replace(result, counters=own, trace=trace))
        return out
