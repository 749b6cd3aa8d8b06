"""SEA, Simple Energy Adaptation (Yuan et al. 2025): refine responses by gradient descent on logits.

Each chain starts from one of the policy's own samples. The variable is a logit tensor over
the policy's vocabulary at every response position; Adam lowers the energy

    E = -alpha * r(x, softmax(y / tau_r)) + lambda * NLL_policy(softmax(y) | x)

with fresh Gaussian noise on the logits at each step. Every step the logits are decoded (argmax
restricted to the policy's top-k at each position) and the text scored by the reward; each
chain keeps its best text. A revise step lets the policy rewrite each chain's best text, and
the answer is the highest-reward text among the chains' bests and their revisions.

A fluency guard (on by default, ``fluency_guard.py``) keeps text that games the reward from being
chosen: a decoded text becomes a chain's best only if its per-token NLL under the policy is
within a margin of the chain's initial sample and it does not repeat itself; revisions compete
under the same rule. The initial samples are always admitted, so a chain whose every better
text was excluded falls back to its sample.

Work is shared: the prompts are prefilled once in the policy (for the initial samples, then
reused every step) and once in the reward model (inside its soft scorer); every chain of every
prompt is one row of the same tensors.

This module is the strategy (settings, cost, memory); the run is ``sea_run`` (the optimiser),
``sea_passes`` (the policy's passes over the prompts' cache) and ``sea_results`` (candidates,
the chosen answer, the trace).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import Field, field_validator

from align_chains.engine.memory import MiB, Phase
from align_chains.engine.sampling import SamplingParams
from align_chains.strategies.base import SearchRun, Strategy, StrategyResult, register_strategy
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.declarations import Bound, Cost, MemoryPlan, MemoryRequest
from align_chains.strategies.sea_run import REVISE_INSTRUCTION, SeaRun, noise_level

__all__ = ["REVISE_INSTRUCTION", "SEA", "noise_level"]

# The fluency guard's defaults: a perplexity e (2.7) times the chain's sample's; a quarter of the
# trigrams repeated (0.3 until the task map: it admitted "a song of the river, a song of the
# stone, a song of the..." at 0.30, which the eval's fluency gate rejects; docs/task_map.md).
GUARD_NLL_MARGIN = 1.0
GUARD_MAX_REPETITION = 0.25
GUARD_NGRAM = 3

# Memory: fp32 [rows, L, V] tensors alive at the backward of one iteration: the variable, noise,
# noisy logits, softmax(noisy) and its product with log p, softmax(noisy / tau_r), the policy's
# step logits and their log-softmax, and the gradient of the noisy logits (9); the backward adds
# the gradients flowing through the two softmaxes, the product and the scaling (4).
_STEP_TENSORS = 13
# Adam keeps exp_avg and exp_avg_sq next to the variable's .grad: 3 more fp32 copies.
_ADAM_TENSORS = 3


@register_strategy
class SEA(Strategy):
    """Gradient-based refinement of the response in continuous (logit) space.

    Defaults are the published ones (L = ``max_new_tokens`` = 50 in the paper). The reward must
    offer a differentiable path (``reward.soft_scorer``): a decoder classifier, a JudgeReward,
    or the MiniLM EmbeddingReward (through the vocabulary bridge).

    Args:
        chains: Chains per prompt, each started from one policy sample.
        iterations: Adam steps per chain.
        lr: Adam learning rate on the logits.
        nll_weight: lambda, weight of the policy's NLL in the energy.
        reward_weight: alpha, weight of the reward in the energy.
        reward_temperature: tau_r, temperature of the reward's softmax over the logits.
        init_temperature: Initial logits are the policy's logits divided by this.
        decode_top_k: Decode only among the policy's top-k tokens at each position.
        patience: Stop a chain after this many steps without a better text (None: never).
        noise: Noise standard deviations over equal parts of the run.
        revise: Let the policy rewrite each chain's best text at the end.
        time_budget_s: Wall-clock cap; the best text so far is returned when reached.
        fluency_guard: Never choose a text whose per-token NLL under the policy is more than
            ``guard_nll_margin`` above its chain's initial sample's, or that repeats itself
            (not in the paper; ``False`` is the paper's choice by reward alone).
        guard_nll_margin: Nats per token a text may exceed its chain's initial sample's NLL.
        guard_max_repetition: Largest admitted share of token n-grams repeating an earlier one.
        guard_ngram: n of the repetition check.

    Examples:
        >>> from align_chains import SEA, SamplingParams, load_policy, load_reward
        >>> policy = load_policy()  # doctest: +SKIP
        >>> judge = load_reward("judge", policy=policy)  # doctest: +SKIP
        >>> sea = SEA(chains=2, iterations=10)
        >>> result = sea.run("Hi!", policy, judge, SamplingParams(max_new_tokens=24))  # doctest: +SKIP
        >>> result.details["reward_path"], [t["hard_reward"] for t in result.trace]  # doctest: +SKIP
    """

    name: ClassVar[str] = "sea"
    aliases: ClassVar[tuple[str, ...]] = ("simple-energy-adaptation",)
    card: ClassVar[StrategyCard | None] = StrategyCard(
        "SEA, gradient refinement in logit space",
        "refines the policy's own answers by gradient descent in logit space",
        "a policy pass and a decode per iteration per chain; slow on a CPU",
        "a differentiable reward and a GPU; on the [task map](task_map.md) (exact surrogates, 1, 2 "
        "and 4 chains x 8 steps, CPU) it never beat Best-of-N at matching tokens, and its gains "
        "followed the number of chains, not the gradient steps, at 4-10x the seconds",
        page="sea.md",
    )
    needs_policy_internals: ClassVar[str | None] = "gradients through the policy's embeddings (SEA)"
    # the relaxed optimisation moves whole logit sequences at once and rounds them at the end:
    # no token-by-token mask can hold it to a grammar (its sample and revise decodes could be)
    follows_grammar: ClassVar[bool] = False

    chains: int = Field(4, ge=1, description="Chains per prompt, each started from a policy sample.")
    iterations: int = Field(200, ge=1, description="Adam steps per chain.")
    lr: float = Field(0.1, gt=0.0, description="Adam learning rate on the logits.")
    nll_weight: float = Field(0.1, ge=0.0, description="lambda: weight of the policy's NLL.")
    reward_weight: float = Field(1.0, gt=0.0, description="alpha: weight of the reward.")
    reward_temperature: float = Field(0.1, gt=0.0, description="tau_r: temperature of the reward's softmax.")
    init_temperature: float = Field(5.0, gt=0.0, description="Initial logits = policy logits / this.")
    decode_top_k: int = Field(10, ge=1, description="Decode only among the policy's top-k at each position.")
    patience: int | None = Field(
        100, ge=1, description="Stop a chain after this many steps without a better text (None: never)."
    )
    noise: tuple[float, ...] = Field(
        (0.1, 0.05, 0.01, 0.001), description="Noise std levels over equal parts of the run."
    )
    revise: bool = Field(True, description="Let the policy rewrite each chain's best text.")
    time_budget_s: float | None = Field(
        None, gt=0.0, description="Wall-clock cap; the best text so far is returned when reached."
    )
    fluency_guard: bool = Field(
        True, description="Never choose a text far less likely than the chain's sample, or a looping one."
    )
    guard_nll_margin: float = Field(
        GUARD_NLL_MARGIN,
        ge=0.0,
        allow_inf_nan=False,
        description="Nats per token a text's NLL under the policy may exceed its chain's initial sample's.",
    )
    guard_max_repetition: float = Field(
        GUARD_MAX_REPETITION,
        ge=0.0,
        le=1.0,
        description="Largest admitted share of token n-grams repeating an earlier one.",
    )
    guard_ngram: int = Field(GUARD_NGRAM, ge=1, le=16, description="n of the repetition check.")

    @field_validator("noise")
    @classmethod
    def _noise_levels(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not math.isfinite(v) or v < 0 for v in value):
            raise ValueError(f"noise levels must be finite and >= 0; got {value}")
        return value

    @classmethod
    def default_params(cls) -> SamplingParams:
        """The paper's response length (L = 50) and initial-sample temperature."""
        return SamplingParams(max_new_tokens=50, temperature=0.8)

    # -- its work ------------------------------------------------------------------------
    work_bounds: ClassVar[tuple[Bound, ...]] = (
        Bound("chains", 16),
        Bound("iterations", 200),
        Bound("decode_top_k", 1000),
    )

    def cost(self, params: SamplingParams) -> Cost:
        """Initial samples, then per iteration one pass over the relaxed sequence and a decode of
        up to L positions (one pass each past the argmax), all chains rows of one tensor."""
        t, chains, iterations = params.max_new_tokens, self.chains, self.iterations
        decode = chains * t * (1 + iterations)
        passes = 1 + t + iterations * (1 + t)
        factors = ("iterations", "chains", "max_tokens")
        return Cost(decode, passes, chains * (1 + 2 * iterations), chains, factors=factors)

    def memory(self, request: MemoryRequest) -> MemoryPlan:
        """The decoded chains, then the peak: an iteration's backward on top of their cache (the
        fp32 [rows, L, V] tensors and Adam's state), and a causal reward's soft scorer (its
        prefix cache and the activations its backward keeps)."""
        plan = super().memory(request)
        rows, new, shape = plan.rows, request.new, request.shape
        decode = plan.phases[-1]
        unit = rows * new * shape.vocab * 4  # one fp32 [rows, L, V] tensor
        model_logits = rows * new * shape.vocab * shape.bytes_per_value
        backward = Phase(
            "SEA backward",
            decode.kv,
            max(decode.activations, shape.forward_bytes(rows, new, request.width + new)),
            decode.logits,
            scoring=True,
            sea_tensors=_STEP_TENSORS * unit + model_logits,
            optimizer_state=_ADAM_TENSORS * unit,
        )
        plan = replace(plan, phases=[*plan.phases, backward]).noted(
            f"SEA: {_STEP_TENSORS} fp32 [rows, L, V] tensors at the backward plus Adam's moments "
            f"and gradient ({unit / MiB:.1f} MiB each); the logit variable and Adam stay fp32 in any dtype"
        )
        reward = request.reward
        if reward.shape is None or not reward.causal:
            return plan
        text = reward.text_tokens(request.width, new)
        soft = rows * text * reward.shape.kv_bytes_per_token + reward.shape.saved_for_backward(rows, new + 16)
        soft += 2 * rows * new * reward.shape.vocab * reward.shape.bytes_per_value  # probs cast to its dtype
        return plan.with_reward(soft)

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        if not run.reward.supports_soft_scoring:
            run.reward.soft_scorer(run.conversations, [0], run.policy)  # raises the explanatory error
        return SeaRun(self, run).execute()
