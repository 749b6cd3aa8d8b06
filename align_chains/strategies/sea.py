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
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator

from align_chains.cancellation import Cancelled, check_cancelled
from align_chains.engine.decoder import Batch, Decoder
from align_chains.engine.memory import MiB, Phase
from align_chains.engine.sampling import SamplingParams, make_generator
from align_chains.errors import InvalidInputError
from align_chains.models.policy import Policy
from align_chains.strategies.base import (
    Candidate,
    SearchRun,
    Strategy,
    StrategyResult,
    register_strategy,
    score_texts,
)
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.declarations import Bound, Cost, MemoryPlan, MemoryRequest
from align_chains.strategies.fluency_guard import FluencyGuard, GuardVerdict, mean_nll, repetition_rate

REVISE_INSTRUCTION = (
    "Rewrite your previous answer: fix repetitive language and unfinished sentences, and keep "
    "its content. Reply with the rewritten answer only."
)

_MASKED = -1e10

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


def noise_level(iteration: int, iterations: int, levels: Sequence[float]) -> float:
    """The noise std at ``iteration`` (1-based): ``levels`` spread over equal parts of the run.

    The published schedule is 0.1 / 0.05 / 0.01 / 0.001 over iterations <=50 / <=100 / <=150 /
    <=200 of 200; with fewer iterations the same four levels cover equal quarters.
    """
    if not levels:
        return 0.0
    part = min(len(levels) - 1, (iteration - 1) * len(levels) // max(iterations, 1))
    return float(levels[part])


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
        "a differentiable reward and a GPU; on the [task map](task_map.md) (exact surrogates, 2 chains "
        "x 8 steps, CPU) it beat Best-of-4 on avoidance, lost on keywords (3 of 10 answers not fluent), "
        "at 10x the seconds",
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
        return _Run(self, run).execute()


def _cut_at_stop(
    policy: Policy, ids: list[int], logprobs: list[float], stop: Sequence[str]
) -> tuple[list[int], list[float], str, str]:
    """An optimised answer ends at its first stop string, as a sampled one does (``Decoder.completions``):
    the text is cut before it and the tokens after the one completing it are dropped.
    Returns ``(token_ids, logprobs, text, finish_reason)``."""
    text = policy.decode(ids)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut < 0:
        return ids, logprobs, text, "length"
    n = next((n for n in range(1, len(ids)) if any(s in policy.decode(ids[:n]) for s in stop)), len(ids))
    return ids[:n], logprobs[:n], text[:cut], "stop"


@dataclass
class _Chain:
    """The best text a chain has found so far."""

    text: str
    tokens: list[int]
    logprobs: list[float]
    reward: float | None
    iteration: int  # 0: the chain's initial sample; -1: a revision
    finish_reason: str
    guard: GuardVerdict | None = None  # the fluency guard's measurements (None for an initial sample)


class _Run:
    """One SEA request: all chains of all prompts as rows of the same tensors."""

    def __init__(self, sea: SEA, run: SearchRun) -> None:
        self.sea, self.policy, self.reward, self.params = sea, run.policy, run.reward, run.params
        self.conversations, self.token_ids, self.progress = run.conversations, run.token_ids, run.progress
        self.search_run = run
        self.length = self.params.max_new_tokens
        self.num_prompts = len(self.conversations)
        self.rows = self.num_prompts * sea.chains
        self.row_prompt = [r // sea.chains for r in range(self.rows)]
        self.counters = run.counters
        self.device = self.policy.device
        self.generator = make_generator(self.params.seed, self.device)
        self.trace: list[dict[str, Any]] = []
        self.flags: dict[str, Any] = {}
        self.memo: dict[tuple[int, str], float] = {}
        self.decode_passes = 0
        self.soft_calls = 0
        self.iteration_seconds: list[float] = []
        self.iteration_decode_passes: list[int] = []
        self.guard = FluencyGuard(sea.guard_nll_margin, sea.guard_max_repetition, sea.guard_ngram)
        self.reference_nll: list[float | None] = [None] * self.rows  # each chain's initial sample
        self.excluded: list[dict[str, Any]] = []  # texts the guard kept from being chosen
        self.guard_passes = 0

    # -- the policy, with the prompt cache reused ------------------------------------------
    def _policy_logits(self, batch: Batch, tokens: torch.Tensor, keep_cache: bool = False) -> torch.Tensor:
        """Logits ``[rows, L, V]`` predicting each of ``tokens`` after the prompt (one pass, no grad).

        The cache is cut back to the prompts afterwards unless ``keep_cache`` (then the caller
        does it with ``_crop``).
        """
        first = batch.prompt_logits[:, None, :]
        if tokens.shape[1] == 1:
            return first.clone()
        feed = tokens[:, :-1]
        new = feed.shape[1]
        ones = torch.ones((feed.shape[0], new), dtype=batch.attention_mask.dtype, device=self.device)
        mask = torch.cat([batch.attention_mask, ones], dim=1)
        positions = batch.prompt_lengths[:, None] + torch.arange(new, device=self.device)[None, :]
        with torch.no_grad():
            out = self.policy.model(
                input_ids=feed,
                attention_mask=mask,
                position_ids=positions,
                cache=batch.cache,
                use_cache=True,
            )
        if not keep_cache:
            self._crop(batch, 0)
        self.counters.forward_passes += 1
        # fp32 whatever the model's dtype (the NLL meets the fp32 variable); written in place,
        # so a bf16 model's logits are converted once, without an intermediate fp32 copy
        logits = torch.empty((*tokens.shape, first.shape[-1]), dtype=torch.float32, device=first.device)
        logits[:, :1] = first
        logits[:, 1:] = out.logits
        return logits

    @staticmethod
    def _crop(batch: Batch, response_tokens: int) -> None:
        """Cut the cache back to the prompts plus ``response_tokens`` tokens."""
        extra = batch.cache.get_seq_length() - batch.prompt_width - response_tokens
        if extra > 0:
            batch.cache.crop(-extra)

    def _restricted_decode(
        self, batch: Batch, logits_var: torch.Tensor, hard: torch.Tensor, step_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmax of the logits among the policy's top-k at each position, decoding left to right.

        The top-k sets depend on the decoded prefix. This step's policy forward on ``hard``
        (whose KV cache is still in ``batch``) gives the right top-k up to the first position
        where the decode leaves ``hard``; from the earliest such position over the rows, the
        decode continues one token per pass on that cache. When the decode agrees with ``hard``
        (common once the logits settle) it costs no extra pass; at worst it costs the L
        single-token passes of an ordinary decode.
        """
        k = min(self.sea.decode_top_k, logits_var.shape[-1])

        def pick(position_logits: torch.Tensor, position_var: torch.Tensor) -> torch.Tensor:
            top = position_logits.topk(k, dim=-1).indices
            return top.gather(-1, position_var.gather(-1, top).argmax(-1, keepdim=True)).squeeze(-1)

        decoded = pick(step_logits, logits_var)
        logits = step_logits
        differs = (decoded != hard).any(0).nonzero()
        if differs.numel():
            first = int(differs[0])  # every row's decode equals ``hard`` before this position
            logits = step_logits.clone()
            self._crop(batch, first)
            mask = batch.attention_mask
            ones = torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=mask.device)
            mask = torch.cat([mask, ones.expand(-1, first)], dim=1)
            for t in range(first, self.length - 1):
                check_cancelled()  # one policy forward per position: each is a step
                mask = torch.cat([mask, ones], dim=1)
                with torch.no_grad():
                    out = self.policy.model(
                        input_ids=decoded[:, t : t + 1],
                        attention_mask=mask,
                        position_ids=(batch.prompt_lengths + t)[:, None],
                        cache=batch.cache,
                        use_cache=True,
                    )
                self.counters.forward_passes += 1
                self.decode_passes += 1
                logits[:, t + 1] = out.logits[:, -1].float()
                decoded[:, t + 1] = pick(logits[:, t + 1], logits_var[:, t + 1])
        self._crop(batch, 0)
        return decoded, logits

    # -- rewards -------------------------------------------------------------------------
    def _hard_scores(self, rows: Sequence[int], texts: Sequence[str]) -> list[float]:
        """Rewards of decoded texts; texts already scored for a prompt are not scored again."""
        keys = [(self.row_prompt[r], t) for r, t in zip(rows, texts, strict=True)]
        new = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if new:
            scores = score_texts(
                self.reward, [self.conversations[p] for p, _ in new], [t for _, t in new], self.counters
            )
            self.memo.update(zip(new, scores, strict=True))
        return [self.memo[k] for k in keys]

    # -- the run -------------------------------------------------------------------------
    def execute(self) -> list[StrategyResult]:
        sea, policy = self.sea, self.policy
        start = time.perf_counter()
        deadline = None if sea.time_budget_s is None else start + sea.time_budget_s
        scorer = self.reward.soft_scorer(self.conversations, self.row_prompt, policy)
        limit = getattr(scorer, "max_length", None)
        if limit is not None and self.length > limit:
            raise InvalidInputError(
                f"SEA's response length (max_tokens={self.length}) exceeds what reward "
                f"{self.reward.name!r} can read ({limit} tokens); lower max_tokens."
            )
        decoder = Decoder(policy, self.counters)
        self.progress.stage("sampling the initial responses", self.length)
        batch = decoder.start(self.token_ids, sea.chains, self.params)
        decoder.extend(batch, generator=self.generator, on_step=lambda _b: self.progress.advance())
        initial = decoder.completions(batch)
        batch = decoder.restart(batch, [sea.chains] * self.num_prompts)  # the prompts' cache, reused
        self.search_run.partial = lambda: initial
        init_scores = self._hard_scores(range(self.rows), [c.text for c in initial])
        best = [
            _Chain(c.text, c.token_ids, c.logprobs, s, 0, c.finish_reason)
            for c, s in zip(initial, init_scores, strict=True)
        ]
        self._set_reference_nll(initial)
        for r, chain in enumerate(best):
            record = self._record(r, 0, None, chain.reward, None, None, chain.text)
            sample = {"text_nll": mean_nll(chain.logprobs), "guard": None}
            repetition = repetition_rate(chain.tokens, sea.guard_ngram)
            self.trace.append({**record, **sample, "repetition": repetition})
        self.search_run.partial = lambda: self._results(best, [], [0] * self.rows, scorer)
        iterations_done = self._optimise(batch, scorer, initial, best, deadline)
        revised = self._revise(batch, best, deadline)
        return self._results(best, revised, iterations_done, scorer)

    def _optimise(
        self, batch: Batch, scorer: Any, initial: Sequence[Any], best: list[_Chain], deadline: float | None
    ) -> list[int]:
        sea, policy = self.sea, self.policy
        rows, length = self.rows, self.length
        vocab = policy.vocab_size
        # initial logits: the policy's logits along each sample, / init_temperature; noise past its end
        padded = torch.full((rows, length), policy.pad_token_id, dtype=torch.long, device=self.device)
        lengths = torch.tensor([len(c.token_ids) for c in initial], device=self.device)
        for r, c in enumerate(initial):  # builds the start tensor once
            if c.token_ids:
                padded[r, : len(c.token_ids)] = torch.tensor(c.token_ids, device=self.device)
        logits0 = self._policy_logits(batch, padded) / sea.init_temperature
        noise0 = torch.randn(logits0.shape, generator=self.generator, device=self.device, dtype=torch.float32)
        beyond = torch.arange(length, device=self.device)[None, :] >= lengths[:, None]
        logits0 = torch.where(beyond[..., None], noise0, logits0)
        special = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        special[[i for i in policy.tokenizer.all_special_ids if i < vocab]] = True
        special[len(policy.tokenizer) :] = True
        logits0 = logits0.masked_fill(special, _MASKED)

        # the optimisation variable and Adam's moments are fp32 whatever the model's dtype: bf16's
        # 8-bit mantissa would swallow Adam's small steps on logits of magnitude ~10
        variable = torch.nn.Parameter(logits0.float())
        optimiser = torch.optim.Adam([variable], lr=sea.lr)
        active = torch.ones(rows, dtype=torch.bool, device=self.device)
        stale = [0] * rows
        done = [0] * rows
        self.progress.stage(f"SEA: {rows} chain(s)", sea.iterations)
        for it in range(1, sea.iterations + 1):
            try:  # an iteration is a natural step; the best chains so far go with the error
                check_cancelled()
            except Cancelled as exc:
                raise exc.attach(partial=list(best), counters=self.counters) from None
            if deadline is not None and time.perf_counter() >= deadline:
                self.flags["time_budget_exhausted"] = True
                break
            began, passes_before = time.perf_counter(), self.decode_passes
            sigma = noise_level(it, sea.iterations, sea.noise)
            noise = torch.randn(
                variable.shape, generator=self.generator, device=self.device, dtype=variable.dtype
            )
            noisy = variable + sigma * noise
            hard = noisy.detach().argmax(-1)
            step_logits = self._policy_logits(batch, hard, keep_cache=True)
            logp = torch.log_softmax(step_logits, dim=-1)  # the policy's graph is detached
            nll = -(noisy.softmax(-1) * logp).sum(-1).mean(-1)
            soft_reward = scorer(torch.softmax(noisy / sea.reward_temperature, dim=-1))
            self.soft_calls += 1
            self.counters.reward_calls += 1
            self.counters.reward_items += rows
            energy = -sea.reward_weight * soft_reward + sea.nll_weight * nll
            finite = torch.isfinite(energy)
            use = finite & active
            optimiser.zero_grad(set_to_none=False)
            if bool(use.any()):
                torch.where(use, energy, torch.zeros_like(energy)).sum().backward(inputs=[variable])
                grad = variable.grad
                assert grad is not None
                grad.masked_fill_(~use[:, None, None], 0.0)
                grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                optimiser.step()
            with torch.no_grad():
                tokens, decode_logits = self._restricted_decode(batch, variable.detach(), hard, step_logits)
            live = [r for r in range(rows) if bool(active[r])]
            ids = tokens.tolist()
            logprobs = torch.log_softmax(decode_logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
            lps = logprobs.tolist()
            ends = {r: _cut_at_stop(policy, ids[r], lps[r], self.params.stop) for r in live}
            texts = {r: ends[r][2] for r in live}
            scores = dict(zip(live, self._hard_scores(live, [texts[r] for r in live]), strict=True))
            for r in live:  # per-step bookkeeping of at most a few chains, not a decode step
                done[r] = it
                e, s = float(energy[r].detach()), float(soft_reward[r].detach())
                kept, kept_lps, _, finish = ends[r]
                verdict = self.guard.check(kept, kept_lps, self.reference_nll[r])
                record = self._record(r, it, s, scores[r], float(nll[r].detach()), e, texts[r], sigma)
                self.trace.append(
                    {
                        **record,
                        "text_nll": verdict.nll,
                        "repetition": verdict.repetition,
                        "guard": verdict.reason,
                    }
                )
                if not math.isfinite(e):
                    active[r] = False
                    self.flags.setdefault("nonfinite_energy_chains", []).append(r)
                    continue
                better = best[r].reward is None or scores[r] > best[r].reward
                if better and self.sea.fluency_guard and not verdict.admitted:
                    self._exclude(r, "optimized", it, scores[r], texts[r], verdict)
                    better = False
                if better:
                    best[r] = _Chain(texts[r], kept, kept_lps, scores[r], it, finish, verdict)
                    stale[r] = 0
                else:
                    stale[r] += 1
                    if sea.patience is not None and stale[r] >= sea.patience:
                        active[r] = False
            self.iteration_seconds.append(time.perf_counter() - began)
            self.iteration_decode_passes.append(self.decode_passes - passes_before)
            self.progress.advance()
            if not bool(active.any()):
                break
        return done

    def _revise(self, batch: Batch, best: list[_Chain], deadline: float | None) -> list[_Chain]:
        if not self.sea.revise:
            return []
        if deadline is not None and time.perf_counter() >= deadline:
            self.flags["time_budget_exhausted"] = True
            self.flags["revise_skipped"] = True
            return []
        conversations = [
            [
                *self.conversations[self.row_prompt[r]],
                {"role": "assistant", "content": chain.text},
                {"role": "user", "content": REVISE_INSTRUCTION},
            ]
            for r, chain in enumerate(best)
        ]
        greedy = SamplingParams(
            max_new_tokens=self.length, temperature=0.0, stop=self.params.stop, seed=self.params.seed
        )
        self.progress.stage("revising", self.length)
        ids = [self.policy.render(c) for c in conversations]
        completions = Decoder(self.policy, self.counters).generate(
            ids, 1, greedy, on_step=lambda _b: self.progress.advance()
        )
        scores = self._hard_scores(range(self.rows), [c.text for c in completions])
        # a revision is judged by the policy reading the plain prompt, like every other candidate
        revised = [
            _Chain(c.text, c.token_ids, c.logprobs, s, -1, c.finish_reason)
            for c, s in zip(completions, scores, strict=True)
        ]
        if self.sea.fluency_guard:
            plain = self._plain_prompt_logprobs(batch, [c.tokens for c in revised])
            for r, (chain, lps) in enumerate(zip(revised, plain, strict=True)):
                chain.guard = self.guard.check(chain.tokens, lps, self.reference_nll[r])
                if not chain.guard.admitted:
                    self._exclude(r, "revised", -1, chain.reward, chain.text, chain.guard)
        return revised

    # -- the fluency guard -----------------------------------------------------------------
    def _set_reference_nll(self, initial: Sequence[Any]) -> None:
        """Each chain's reference: its initial sample's per-token NLL (an empty sample borrows the
        mean over its prompt's other samples)."""
        own = [mean_nll(c.logprobs) for c in initial]
        chains = self.sea.chains
        for r, value in enumerate(own):
            if value is None:
                siblings = [v for v in own[r - r % chains : r - r % chains + chains] if v is not None]
                value = statistics.fmean(siblings) if siblings else None
            self.reference_nll[r] = value

    def _plain_prompt_logprobs(self, batch: Batch, answers: Sequence[list[int]]) -> list[list[float]]:
        """log pi(token | plain prompt, answer so far) along each row's answer: one policy pass on
        the prompts' cache (counted in ``forward_passes`` and in the guard's details)."""
        width = max((len(a) for a in answers), default=0)
        if width == 0:
            return [[] for _ in answers]
        padded = torch.full(
            (self.rows, width), self.policy.pad_token_id, dtype=torch.long, device=self.device
        )
        for r, answer in enumerate(answers):  # builds one tensor
            if answer:
                padded[r, : len(answer)] = torch.tensor(answer, device=self.device)
        logits = self._policy_logits(batch, padded)
        self.guard_passes += 1 if width > 1 else 0
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, padded[..., None]).squeeze(-1).tolist()
        return [row[: len(a)] for row, a in zip(logprobs, answers, strict=True)]

    def _exclude(
        self, row: int, kind: str, iteration: int, reward: float | None, text: str, verdict: GuardVerdict
    ) -> None:
        self.excluded.append(
            {
                "prompt": self.row_prompt[row],
                "chain": row % self.sea.chains,
                "kind": kind,
                "iteration": iteration,
                "reward": reward,
                **verdict.as_dict(),
                "text": text if len(text) <= 120 else text[:117] + "...",
            }
        )

    # -- results -------------------------------------------------------------------------
    def _record(
        self,
        row: int,
        iteration: int,
        soft: float | None,
        hard: float | None,
        nll: float | None,
        energy: float | None,
        text: str,
        sigma: float | None = None,
    ) -> dict[str, Any]:
        return {
            "prompt": self.row_prompt[row],
            "chain": row % self.sea.chains,
            "iteration": iteration,
            "soft_reward": soft,
            "hard_reward": hard,
            "nll": nll,
            "energy": energy,
            "noise": sigma,
            "text": text,
        }

    def _guard_details(self, excluded: list[dict[str, Any]]) -> dict[str, Any]:
        sea = self.sea
        if not sea.fluency_guard:
            return {"on": False}
        return {
            "on": True,
            "nll_margin": sea.guard_nll_margin,
            "max_repetition": sea.guard_max_repetition,
            "ngram": sea.guard_ngram,
            "excluded": [{k: v for k, v in e.items() if k != "prompt"} for e in excluded],
            "forward_passes": self.guard_passes,
        }

    def _results(
        self, best: list[_Chain], revised: list[_Chain], iterations_done: list[int], scorer: Any
    ) -> list[StrategyResult]:
        results = []
        chains = self.sea.chains
        for p in range(self.num_prompts):
            rows = range(p * chains, (p + 1) * chains)
            candidates = [
                Candidate(
                    text=best[r].text,
                    reward=best[r].reward,
                    token_ids=best[r].tokens,
                    logprobs=best[r].logprobs,
                    finish_reason=best[r].finish_reason,
                    meta={
                        "chain": r % chains,
                        "kind": "optimized",
                        "iteration": best[r].iteration,
                        "guard": best[r].guard.as_dict() if best[r].guard is not None else None,
                    },
                )
                for r in rows
            ]
            for r in rows if revised else ():
                candidates.append(
                    Candidate(
                        text=revised[r].text,
                        reward=revised[r].reward,
                        token_ids=revised[r].tokens,
                        logprobs=revised[r].logprobs,
                        finish_reason=revised[r].finish_reason,
                        meta={
                            "chain": r % chains,
                            "kind": "revised",
                            "guard": revised[r].guard.as_dict() if revised[r].guard is not None else None,
                        },
                    )
                )
            # a chain's best passed the guard when it was kept (its initial sample always does)
            scored = [
                j
                for j, c in enumerate(candidates)
                if c.reward is not None and (not self.sea.fluency_guard or _admitted(c))
            ]
            best_index = max(scored, key=lambda j: (candidates[j].reward, -j)) if scored else 0
            nonfinite = [r % chains for r in self.flags.get("nonfinite_energy_chains", []) if r in rows]
            flags = {k: v for k, v in self.flags.items() if k != "nonfinite_energy_chains"}
            if nonfinite:
                flags["nonfinite_energy_chains"] = nonfinite
            excluded = [e for e in self.excluded if e["prompt"] == p]
            chosen = candidates[best_index]
            if excluded and chosen.meta["kind"] == "optimized" and chosen.meta["iteration"] == 0:
                flags["fluency_guard_fallback"] = True  # every text better than a sample was excluded
            results.append(
                StrategyResult(
                    strategy=self.sea.name,
                    text=candidates[best_index].text,
                    reward=candidates[best_index].reward,
                    candidates=candidates,
                    best_index=best_index,
                    prompt_tokens=len(self.token_ids[p]),
                    counters=replace(self.counters),
                    trace=[t for t in self.trace if t["prompt"] == p],
                    flags=flags,
                    details={
                        "iterations": max(iterations_done[r] for r in rows),
                        "iterations_per_chain": [iterations_done[r] for r in rows],
                        "chains": chains,
                        "reward_path": scorer.path,
                        "vocab_coverage": scorer.coverage,
                        "decode_passes": self.decode_passes,
                        "seconds_per_iteration": (
                            statistics.median(self.iteration_seconds) if self.iteration_seconds else None
                        ),
                        "decode_passes_per_iteration": (
                            statistics.median(self.iteration_decode_passes)
                            if self.iteration_decode_passes
                            else None
                        ),
                        "soft_reward_calls": self.soft_calls,
                        "fluency_guard": self._guard_details(excluded),
                    },
                )
            )
        return results


def _admitted(candidate: Candidate) -> bool:
    guard = candidate.meta.get("guard")
    return guard is None or guard["reason"] is None
