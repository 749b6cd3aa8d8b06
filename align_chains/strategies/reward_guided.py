"""ARGS: reward-guided token search (Khanov et al. 2024).

At every token each row takes the policy's top-k next tokens, scores the k extended responses
with the reward and picks by ``log pi(token) + w * r(x, y<t + token)``: the argmax (greedy) or a
sample from ``softmax(score / T)`` over the k candidates.

The k branches are scored incrementally when the reward allows it (a classifier reward on the
policy's vocabulary keeps its own KV cache and scores the k candidates as k one-token branches
of one forward, see ``rewards/incremental.py``); any other reward falls back to decoding the
branches to text and calling ``reward.score``, which is correct but re-reads the whole response
for every candidate at every token.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Decoder
from align_chains.engine.sampling import SamplingParams, make_generator, sample_tokens
from align_chains.errors import InvalidInputError
from align_chains.models.policy import Policy
from align_chains.rewards.base import RewardModel
from align_chains.rewards.incremental import BranchScorer, ClassifierBranchScorer, TextBranchScorer
from align_chains.strategies.base import (
    OnCommit,
    SearchRun,
    Strategy,
    StrategyResult,
    register_strategy,
    score_texts,
)
from align_chains.strategies.best_of_n import best_per_prompt
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.declarations import Bound, Cost, MemoryPlan, MemoryRequest

# ClassifierBranchScorer's cache reserves room for the k candidate columns (rewards/incremental.py)
_CANDIDATE_COLUMNS = 64


def branch_scorer(
    reward: RewardModel, policy: Policy, counters: ComputeCounters, scoring: str = "auto"
) -> BranchScorer:
    """The incremental scorer when the reward offers one on the policy's vocabulary, else text.

    ``scoring="incremental"`` insists on the fast path and raises when the reward cannot take it.
    """
    incremental = getattr(reward, "branch_scorer", None)
    if scoring != "text":
        if incremental is not None:
            scorer = incremental(policy, counters)
            if scorer is not None:
                return scorer
        elif ClassifierBranchScorer.supports(reward, policy):
            return ClassifierBranchScorer(reward, policy, counters)
        if scoring == "incremental":
            raise InvalidInputError(
                f"scoring='incremental' needs a reward that shares the policy's vocabulary: reward "
                f"{reward.name!r} cannot score tokens of policy {policy.name!r} (a classifier reward "
                "with a different tokenizer, or a reward that only reads text). Use scoring='auto' "
                "to re-tokenise text instead (correct, slower)."
            )
    return TextBranchScorer(reward, policy, counters)


@register_strategy
class RewardGuided(Strategy):
    """ARGS settings: ``k`` candidates per token, reward weight ``w``, greedy or sampled choice.

    ARGS (Khanov et al. 2024): at every token, the policy's top-``k`` next tokens are scored by
    the reward on the extended answer and chosen by ``log pi(token) + w * r``.

    Args:
        k: Top-k policy tokens scored at every step.
        w: Weight of the reward against log pi.
        mode: ``"greedy"`` (argmax, default) or ``"sample"`` (softmax over the k at the
            sampling temperature).
        scoring: ``"incremental"`` (a reward on the policy's vocabulary scores k tokens in one
            forward), ``"text"`` (re-tokenised text through ``score``) or ``"auto"``.

    Examples:
        >>> from align_chains import RewardGuided, SamplingParams, load_policy, load_reward
        >>> args = RewardGuided(k=5, w=1.5)
        >>> params = SamplingParams(max_new_tokens=32)
        >>> result = args.run("Name a fruit.", load_policy(), load_reward(), params)  # doctest: +SKIP
    """

    name: ClassVar[str] = "reward-guided"
    aliases: ClassVar[tuple[str, ...]] = ("args", "reward_guided")
    card: ClassVar[StrategyCard | None] = StrategyCard(
        "ARGS, reward-guided token search",
        "at every token, scores the policy's top-k continuations with the reward",
        "one reward call over k texts per token (about 0.4× plain sampling's tokens/s here)",
        "an exact [0, 1] reward on which words appear (keywords, avoidance, tone): with k=16, w=20, "
        "mode=sample it met them about as often as Best-of-16 at 1x tokens on the "
        "[task map](task_map.md); no help for length or format; weak at the shipped w=1.5",
        page="guided_decoding.md",
    )
    streams: ClassVar[bool] = True
    needs_policy_internals: ClassVar[str | None] = "the policy's next-token logits at every step (ARGS)"

    k: int = Field(10, ge=1, le=1000, description="Top-k policy tokens scored at every step.")
    w: float = Field(1.5, ge=0.0, allow_inf_nan=False, description="Weight of the reward against log pi.")
    mode: Literal["greedy", "sample"] = Field(
        "greedy", description="greedy: argmax of log pi + w r; sample: softmax((log pi + w r) / T)."
    )
    scoring: Literal["auto", "incremental", "text"] = Field(
        "auto", description="auto: incremental when the reward shares the policy's vocabulary, else text."
    )

    work_bounds: ClassVar[tuple[Bound, ...]] = (Bound("k", 1000),)

    def cost(self, params: SamplingParams) -> Cost:
        """One row; at every token a scorer forward beside the policy's, k branches scored."""
        t = params.max_new_tokens
        return Cost(t, 2 * (1 + t), self.k * t + 1, 1, factors=("k", "max_tokens"))

    def memory(self, request: MemoryRequest) -> MemoryPlan:
        """One row per prompt; a classifier reward keeps its own preallocated cache row per
        prompt (``ClassifierBranchScorer``), with room for the k candidate columns."""
        plan = super().memory(request)
        reward = request.reward
        if reward.shape is None or reward.kind != "classifier":
            return plan
        columns = request.width + request.new + _CANDIDATE_COLUMNS
        return plan.with_reward(plan.rows * columns * reward.shape.kv_bytes_per_token)

    def _search(
        self, run: SearchRun, *, on_commit: OnCommit | None = None, scorer: BranchScorer | None = None
    ) -> list[StrategyResult]:
        """Guide one row per prompt. ``scorer`` overrides the branch scorer (tests, benchmarks)."""
        policy, params, progress, counters = run.policy, run.params, run.progress, run.counters
        conversations = run.conversations
        k = min(self.k, policy.vocab_size)
        decoder = Decoder(policy, counters)
        scorer = scorer or branch_scorer(run.reward, policy, counters, self.scoring)
        batch = decoder.start(run.token_ids, 1, params)
        scorer.start(conversations, list(range(len(conversations))), params.max_new_tokens)
        generator = make_generator(params.seed, policy.device)
        choose = SamplingParams(temperature=params.temperature, max_new_tokens=1)
        sampled = self.mode == "sample" and params.temperature > 0
        steps: list[tuple[torch.Tensor, ...]] = []
        run.partial = lambda: best_per_prompt(
            self.name, decoder.completions(batch), None, counters, len(conversations)
        )
        progress.stage(f"reward-guided decoding (k={k})", params.max_new_tokens)
        while not batch.done:
            logprobs = torch.log_softmax(decoder.logits(batch), dim=-1)
            top_logprobs, top_ids = logprobs.topk(k, dim=-1)
            alive = ~batch.finished
            rewards = scorer.score(top_ids, alive).to(top_logprobs.device)
            total = top_logprobs + self.w * rewards
            column = sample_tokens(total, choose, generator) if sampled else total.argmax(-1)
            tokens = top_ids.gather(-1, column[:, None]).squeeze(-1)
            decoder.append(batch, tokens)
            scorer.commit(column, tokens)
            steps.append((alive, tokens, column, rewards.gather(-1, column[:, None]).squeeze(-1)))
            if on_commit is not None:
                for p in alive.nonzero().flatten().tolist():
                    on_commit(p, [int(tokens[p])])
            progress.advance()
        completions = decoder.completions(batch)
        read: list[int] = []
        scores = score_texts(
            run.reward, conversations, [c.text for c in completions], counters, tokens_read=read
        )
        results = best_per_prompt(
            self.name,
            completions,
            scores,
            counters,
            len(conversations),
            details=[{"k": k, "w": self.w, "mode": self.mode, "scoring": type(scorer).__name__}]
            * len(conversations),
            reward_tokens=read,
        )
        for p, result in enumerate(results):
            result.counters.reward_items = counters.reward_items  # branch scoring is shared by the batch
            result.trace = _token_trace(steps, p, result.best.logprobs)
        return results


def _token_trace(steps: list[tuple[torch.Tensor, ...]], row: int, logprobs: list[float]) -> list[dict]:
    """One record per committed token of ``row``: token, its rank among the k, its partial reward."""
    records = []
    for step, (alive, tokens, column, reward) in enumerate(steps):
        if not bool(alive[row]):
            break
        records.append(
            {
                "step": step,
                "token": int(tokens[row]),
                "rank": int(column[row]),
                "logprob": logprobs[step] if step < len(logprobs) else None,
                "reward": float(reward[row]),
            }
        )
    return records
