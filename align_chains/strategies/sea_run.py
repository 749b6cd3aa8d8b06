"""One SEA request: all chains of all prompts as rows of the same tensors.

The run samples each chain's start from the policy, then lowers the energy with Adam on a
logit variable (``_step``: one noisy pass of the policy and the soft reward, a backward, a
restricted decode), keeps each chain's best decoded text under the fluency guard (``_keep``),
lets the policy revise the bests, and hands the chains to ``sea_results``. The policy's passes
over the prompts' cache are ``sea_passes.PolicyPasses``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from align_chains.cancellation import Cancelled, check_cancelled
from align_chains.engine.decoder import Batch, Completion, Decoder
from align_chains.engine.sampling import SamplingParams, make_generator
from align_chains.errors import InvalidInputError
from align_chains.strategies.base import SearchRun, StrategyResult, score_texts
from align_chains.strategies.fluency_guard import FluencyGuard, GuardVerdict, mean_nll, repetition_rate
from align_chains.strategies.sea_passes import PolicyPasses
from align_chains.strategies.sea_results import Chain, RunLog, cut_at_stop, results, trace_record

if TYPE_CHECKING:
    from align_chains.strategies.sea import SEA

REVISE_INSTRUCTION = (
    "Rewrite your previous answer: fix repetitive language and unfinished sentences, and keep "
    "its content. Reply with the rewritten answer only."
)

_MASKED = -1e10


def noise_level(iteration: int, iterations: int, levels: Sequence[float]) -> float:
    """The noise std at ``iteration`` (1-based): ``levels`` spread over equal parts of the run.

    The published schedule is 0.1 / 0.05 / 0.01 / 0.001 over iterations <=50 / <=100 / <=150 /
    <=200 of 200; with fewer iterations the same four levels cover equal quarters.
    """
    if not levels:
        return 0.0
    part = min(len(levels) - 1, (iteration - 1) * len(levels) // max(iterations, 1))
    return float(levels[part])


@dataclass
class _Optimisation:
    """The optimiser's state across iterations."""

    variable: torch.nn.Parameter
    optimiser: torch.optim.Optimizer
    active: torch.Tensor  # [rows] bool: chains still optimised
    stale: list[int]  # steps since each chain's best improved
    done: list[int]  # iterations each chain ran


@dataclass
class _Step:
    """What one iteration measured on every row."""

    sigma: float
    energy: torch.Tensor
    soft_reward: torch.Tensor
    nll: torch.Tensor
    tokens: torch.Tensor  # [rows, L] the restricted decode
    decode_logits: torch.Tensor  # [rows, L, V] the policy's logits along it


class SeaRun:
    """One SEA request (see the module docstring)."""

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
        self.passes = PolicyPasses(self.policy, self.counters, sea.decode_top_k, self.length)
        self.log = RunLog()
        self.memo: dict[tuple[int, str], float] = {}
        self.guard = FluencyGuard(sea.guard_nll_margin, sea.guard_max_repetition, sea.guard_ngram)
        self.reference_nll: list[float | None] = [None] * self.rows  # each chain's initial sample

    # -- rewards -------------------------------------------------------------------------
    def hard_scores(self, rows: Sequence[int], texts: Sequence[str]) -> list[float]:
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
        sea = self.sea
        start = time.perf_counter()
        deadline = None if sea.time_budget_s is None else start + sea.time_budget_s
        scorer = self.reward.soft_scorer(self.conversations, self.row_prompt, self.policy)
        limit = getattr(scorer, "max_length", None)
        if limit is not None and self.length > limit:
            raise InvalidInputError(
                f"SEA's response length (max_tokens={self.length}) exceeds what reward "
                f"{self.reward.name!r} can read ({limit} tokens); lower max_tokens."
            )
        batch, initial = self._sample()
        best = self._initial_chains(initial)
        self.search_run.partial = lambda: self._results(best, [], [0] * self.rows, scorer)
        iterations_done = self._optimise(batch, scorer, initial, best, deadline)
        revised = self._revise(batch, best, deadline)
        return self._results(best, revised, iterations_done, scorer)

    def _sample(self) -> tuple[Batch, list[Completion]]:
        """Each chain's initial sample, and the prompts' cache reused by every later pass."""
        decoder = Decoder(self.policy, self.counters)
        self.progress.stage("sampling the initial responses", self.length)
        batch = decoder.start(self.token_ids, self.sea.chains, self.params)
        decoder.extend(batch, generator=self.generator, on_step=lambda _b: self.progress.advance())
        initial = decoder.completions(batch)
        batch = decoder.restart(batch, [self.sea.chains] * self.num_prompts)  # the prompts' cache, reused
        self.search_run.partial = lambda: initial
        return batch, initial

    def _initial_chains(self, initial: list[Completion]) -> list[Chain]:
        """The samples, scored, as each chain's first best (and the guard's references)."""
        init_scores = self.hard_scores(range(self.rows), [c.text for c in initial])
        best = [Chain(c, s, 0) for c, s in zip(initial, init_scores, strict=True)]
        self._set_reference_nll(initial)
        for r, chain in enumerate(best):
            record = trace_record(r, self.sea.chains, 0, None, chain.reward, None, None, chain.text)
            sample = {"text_nll": mean_nll(chain.logprobs), "guard": None}
            repetition = repetition_rate(chain.tokens, self.sea.guard_ngram)
            self.log.trace.append({**record, **sample, "repetition": repetition})
        return best

    def _start_optimisation(self, batch: Batch, initial: Sequence[Completion]) -> _Optimisation:
        """The logit variable: the policy's logits along each sample, / init_temperature, noise
        past its end, special tokens masked; and Adam on it."""
        policy, rows, length, device = self.policy, self.rows, self.length, self.device
        vocab = policy.vocab_size
        padded = torch.full((rows, length), policy.pad_token_id, dtype=torch.long, device=device)
        lengths = torch.tensor([len(c.token_ids) for c in initial], device=device)
        for r, c in enumerate(initial):  # builds the start tensor once
            if c.token_ids:
                padded[r, : len(c.token_ids)] = torch.tensor(c.token_ids, device=device)
        logits0 = self.passes.logits(batch, padded) / self.sea.init_temperature
        noise0 = torch.randn(logits0.shape, generator=self.generator, device=device, dtype=torch.float32)
        beyond = torch.arange(length, device=device)[None, :] >= lengths[:, None]
        logits0 = torch.where(beyond[..., None], noise0, logits0)
        special = torch.zeros(vocab, dtype=torch.bool, device=device)
        special[[i for i in policy.tokenizer.all_special_ids if i < vocab]] = True
        special[len(policy.tokenizer) :] = True
        logits0 = logits0.masked_fill(special, _MASKED)
        # the optimisation variable and Adam's moments are fp32 whatever the model's dtype: bf16's
        # 8-bit mantissa would swallow Adam's small steps on logits of magnitude ~10
        variable = torch.nn.Parameter(logits0.float())
        optimiser = torch.optim.Adam([variable], lr=self.sea.lr)
        active = torch.ones(rows, dtype=torch.bool, device=device)
        return _Optimisation(variable, optimiser, active, [0] * rows, [0] * rows)

    def _optimise(
        self,
        batch: Batch,
        scorer: Any,
        initial: Sequence[Completion],
        best: list[Chain],
        deadline: float | None,
    ) -> list[int]:
        """Up to ``iterations`` steps on every active chain; returns the iterations each ran."""
        sea, log = self.sea, self.log
        state = self._start_optimisation(batch, initial)
        self.progress.stage(f"SEA: {self.rows} chain(s)", sea.iterations)
        for it in range(1, sea.iterations + 1):
            try:  # an iteration is a natural step; the best chains so far go with the error
                check_cancelled()
            except Cancelled as exc:
                raise exc.attach(partial=list(best), counters=self.counters) from None
            if deadline is not None and time.perf_counter() >= deadline:
                log.flags["time_budget_exhausted"] = True
                break
            began, passes_before = time.perf_counter(), self.passes.decode_passes
            self._keep(self._step(batch, scorer, state, it), state, best, it)
            log.iteration_seconds.append(time.perf_counter() - began)
            log.iteration_decode_passes.append(self.passes.decode_passes - passes_before)
            self.progress.advance()
            if not bool(state.active.any()):
                break
        return state.done

    def _step(self, batch: Batch, scorer: Any, state: _Optimisation, it: int) -> _Step:
        """One noisy evaluation of the energy, an Adam step on the active chains, and a decode."""
        sea, variable = self.sea, state.variable
        sigma = noise_level(it, sea.iterations, sea.noise)
        noise = torch.randn(
            variable.shape, generator=self.generator, device=self.device, dtype=variable.dtype
        )
        noisy = variable + sigma * noise
        hard = noisy.detach().argmax(-1)
        step_logits = self.passes.logits(batch, hard, keep_cache=True)
        logp = torch.log_softmax(step_logits, dim=-1)  # the policy's graph is detached
        nll = -(noisy.softmax(-1) * logp).sum(-1).mean(-1)
        soft_reward = scorer(torch.softmax(noisy / sea.reward_temperature, dim=-1))
        self.log.soft_calls += 1
        self.counters.reward_calls += 1
        self.counters.reward_items += self.rows
        energy = -sea.reward_weight * soft_reward + sea.nll_weight * nll
        use = torch.isfinite(energy) & state.active
        state.optimiser.zero_grad(set_to_none=False)
        if bool(use.any()):
            torch.where(use, energy, torch.zeros_like(energy)).sum().backward(inputs=[variable])
            grad = variable.grad
            assert grad is not None
            grad.masked_fill_(~use[:, None, None], 0.0)
            grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            state.optimiser.step()
        with torch.no_grad():
            tokens, decode_logits = self.passes.restricted_decode(batch, variable.detach(), hard, step_logits)
        return _Step(sigma, energy, soft_reward, nll, tokens, decode_logits)

    def _keep(self, step: _Step, state: _Optimisation, best: list[Chain], it: int) -> None:
        """Score each active chain's decoded text and keep it when it beats the chain's best
        (and passes the guard); chains stop on a non-finite energy or when out of patience."""
        sea, log = self.sea, self.log
        live = [r for r in range(self.rows) if bool(state.active[r])]
        ids = step.tokens.tolist()
        logprobs = (
            torch.log_softmax(step.decode_logits, dim=-1).gather(-1, step.tokens[..., None]).squeeze(-1)
        )
        lps = logprobs.tolist()
        ends = {r: cut_at_stop(self.policy, ids[r], lps[r], self.params.stop) for r in live}
        texts = {r: ends[r][2] for r in live}
        scores = dict(zip(live, self.hard_scores(live, [texts[r] for r in live]), strict=True))
        for r in live:  # per-step bookkeeping of at most a few chains, not a decode step
            state.done[r] = it
            e, s = float(step.energy[r].detach()), float(step.soft_reward[r].detach())
            kept, kept_lps, _, finish = ends[r]
            verdict = self.guard.check(kept, kept_lps, self.reference_nll[r])
            nll = float(step.nll[r].detach())
            record = trace_record(r, sea.chains, it, s, scores[r], nll, e, texts[r], step.sigma)
            guard = {"text_nll": verdict.nll, "repetition": verdict.repetition, "guard": verdict.reason}
            log.trace.append({**record, **guard})
            if not math.isfinite(e):
                state.active[r] = False
                log.flags.setdefault("nonfinite_energy_chains", []).append(r)
                continue
            better = best[r].reward is None or scores[r] > best[r].reward
            if better and sea.fluency_guard and not verdict.admitted:
                self._exclude(r, "optimized", it, scores[r], texts[r], verdict)
                better = False
            if better:
                p = self.row_prompt[r]
                completion = Completion(
                    prompt_index=p,
                    text=texts[r],
                    token_ids=kept,
                    logprobs=kept_lps,
                    finish_reason=finish,
                    prompt_tokens=len(self.token_ids[p]),
                    generated_tokens=len(kept),
                )
                best[r] = Chain(completion, scores[r], it, verdict)
                state.stale[r] = 0
            else:
                state.stale[r] += 1
                if sea.patience is not None and state.stale[r] >= sea.patience:
                    state.active[r] = False

    def _revise(self, batch: Batch, best: list[Chain], deadline: float | None) -> list[Chain]:
        """The policy rewrites each chain's best (greedy); the guard judges the rewrites."""
        if not self.sea.revise:
            return []
        if deadline is not None and time.perf_counter() >= deadline:
            self.log.flags["time_budget_exhausted"] = True
            self.log.flags["revise_skipped"] = True
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
        scores = self.hard_scores(range(self.rows), [c.text for c in completions])
        # a revision is judged by the policy reading the plain prompt, like every other candidate
        revised = [Chain(c, s, -1) for c, s in zip(completions, scores, strict=True)]
        if self.sea.fluency_guard:
            plain = self.passes.plain_prompt_logprobs(batch, [c.tokens for c in revised])
            for r, (chain, lps) in enumerate(zip(revised, plain, strict=True)):
                chain.guard = self.guard.check(chain.tokens, lps, self.reference_nll[r])
                if not chain.guard.admitted:
                    self._exclude(r, "revised", -1, chain.reward, chain.text, chain.guard)
        return revised

    # -- the fluency guard -----------------------------------------------------------------
    def _set_reference_nll(self, initial: Sequence[Completion]) -> None:
        """Each chain's reference: its initial sample's per-token NLL (an empty sample borrows the
        mean over its prompt's other samples)."""
        own = [mean_nll(c.logprobs) for c in initial]
        chains = self.sea.chains
        for r, value in enumerate(own):
            if value is None:
                siblings = [v for v in own[r - r % chains : r - r % chains + chains] if v is not None]
                value = statistics.fmean(siblings) if siblings else None
            self.reference_nll[r] = value

    def _exclude(
        self, row: int, kind: str, iteration: int, reward: float | None, text: str, verdict: GuardVerdict
    ) -> None:
        self.log.excluded.append(
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

    def _results(
        self, best: list[Chain], revised: list[Chain], iterations_done: list[int], scorer: Any
    ) -> list[StrategyResult]:
        self.log.decode_passes, self.log.guard_passes = self.passes.decode_passes, self.passes.guard_passes
        prompt_tokens = [len(ids) for ids in self.token_ids]
        return results(
            self.sea, self.log, (best, revised), iterations_done, scorer, prompt_tokens, self.counters
        )
