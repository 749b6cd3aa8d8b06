"""DARWIN: evolutionary search over mutated instructions with reward-guided replacement.

Hung et al., arXiv 2406.15193. The strategy class (its settings and their rules) and the
assembly of its results on a local policy. The search itself is ``darwin_driver.py`` (written
once, also used over an API by ``RerankChatModel(strategy="darwin")``), its selection and archive
rules ``darwin_archive.py``; on a local policy it decodes through ``darwin_local.py``, whose
candidates are KV-cache rows (``darwin_population.py``: each prompt prefilled once, a replacement
prefills only the copied answer) under per-request caps (``darwin_budget.py``). The authors' code
instead re-encodes every prompt and partial answer every ``m`` tokens; the benchmarks'
``reference/darwin_reprefill.py`` does that, through ``Darwin.population``, for comparison.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import Field, model_validator

from align_chains.engine.decoder import Completion
from align_chains.engine.memory import ModelShape, Phase
from align_chains.engine.sampling import SamplingParams
from align_chains.strategies.base import SearchRun, Strategy, StrategyResult, register_strategy
from align_chains.strategies.candidates import candidate_from, chosen_result
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.darwin_driver import Answer, DarwinDriver
from align_chains.strategies.darwin_local import LocalAnswer, LocalBackend, check_mutation_requests_fit
from align_chains.strategies.darwin_population import CachedPopulation, Population
from align_chains.strategies.darwin_trace import records
from align_chains.strategies.declarations import Bound, Cost, MemoryPlan, MemoryRequest
from align_chains.strategies.mutation import MutationMode, mutation_request_tokens


def check_k_at_most_n(k: int, n: int) -> None:
    """DARWIN's rule across settings (one home for it): the top ``k`` are kept out of ``n``."""
    if k > n:
        raise ValueError(
            f"k={k} must not exceed n={n}: the top k are kept out of n candidates; lower k or raise n."
        )


@register_strategy
class Darwin(Strategy):
    """DARWIN (Hung et al. 2024): mutate the instruction, decode, replace losers, evolve an archive.

    Defaults are the paper's: n=5 mutations, replacement every m=40 tokens, top k=3, 3 cycles
    (use temperature 0.7 and top-k 40 sampling, as ``DarwinChatModel`` does by default).
    ``max_total_tokens`` and ``time_budget_s`` cap a request; when one runs out the best
    answer so far is returned and ``flags["budget_exhausted"]`` names the cap.

    Args:
        n: Mutated instructions (candidates) per cycle.
        m: Tokens between two reward-guided replacements.
        k: Candidates kept at each replacement (``k <= n``).
        cycles: Mutation cycles after the first answer.
        mutation_max_tokens: Token cap on the policy's list of rewritten instructions.
        max_total_tokens: Cap on the tokens one request generates (answers and mutation lists).
        time_budget_s: Cap on one request's wall seconds.
        mutation_mode: How a mutation reaches the candidates. ``"rewrite"`` (default, the
            paper's): each candidate answers a rewrite of the instruction. A small policy's
            rewrites often drop the user's constraint (the words to use, the number N) while the
            reward still checks it, so two generic options keep it: ``"guard"`` drops a rewrite
            that loses any number, quoted text or listed item of the original instruction
            (``mutation.constraint_terms``) and answers the parent instead, counting the drops in
            ``details["mutations_dropped"]`` and the trace; ``"restate"`` answers the original
            instruction verbatim with the rewrite added after it as guidance, and evolves that
            guidance.

    Examples:
        >>> from align_chains import Darwin, SamplingParams, load_policy, load_reward
        >>> from align_chains.plots import plot_darwin_trace
        >>> darwin = Darwin(n=5, m=16, k=3, cycles=1)
        >>> params = SamplingParams(max_new_tokens=64, temperature=0.7, top_k=40, seed=0)
        >>> result = darwin.run("Tips for sleep?", load_policy(), load_reward(), params)  # doctest: +SKIP
        >>> result.details["archive"], plot_darwin_trace(result.trace)  # doctest: +SKIP
    """

    name: ClassVar[str] = "darwin"
    card: ClassVar[StrategyCard | None] = StrategyCard(
        "DARWIN, evolving instructions",
        "decodes from rewrites of the instruction, replaces poorly rewarded partial answers with copies "
        "of good ones",
        "a first answer, a mutation list and n candidates per cycle",
        "the instruction itself limits the answer and the policy can rewrite it faithfully; on the "
        "[task map](task_map.md) the paper's mode lost to Best-of-N at matching tokens (pooled, 4x "
        'and 16x: the 135M policy\'s rewrites dropped the constraint); `mutation_mode="restate"` '
        "drew level with it at 3-4x the seconds",
        page="darwin.md",
    )

    n: int = Field(5, ge=1, description="Mutated instructions (candidates) per cycle.")
    m: int = Field(40, ge=1, description="Tokens between two reward-guided replacements.")
    k: int = Field(3, ge=1, description="Candidates kept at each replacement (k <= n).")
    cycles: int = Field(3, ge=1, description="Mutation cycles after the first answer.")
    mutation_max_tokens: int = Field(
        192, ge=16, description="Token cap for the policy's list of rewritten instructions."
    )
    max_total_tokens: int | None = Field(
        None, ge=1, description="Cap on tokens generated by one request (answers and mutations)."
    )
    time_budget_s: float | None = Field(None, gt=0, description="Cap on one request's wall seconds.")
    mutation_mode: MutationMode = Field(
        "rewrite",
        description="rewrite: answer the rewrites (the paper's); guard: drop rewrites losing a number, "
        "quoted text or listed item of the original; restate: the original plus the rewrite as guidance.",
    )

    @model_validator(mode="after")
    def _k_at_most_n(self) -> Darwin:
        check_k_at_most_n(self.k, self.n)
        return self

    # -- its work ------------------------------------------------------------------------
    work_bounds: ClassVar[tuple[Bound, ...]] = (
        Bound("n", 64),
        Bound("k", 1000),
        Bound("m", 1024),
        Bound("cycles", 20),
        Bound("mutation_max_tokens", 512),
        Bound("max_total_tokens", 200_000),
    )

    def cost(self, params: SamplingParams) -> Cost:
        """s0 and its mutation list; per cycle a list and n answers, scored every m tokens;
        ``max_total_tokens`` stops it early."""
        t, mut, cycles, n = params.max_new_tokens, self.mutation_max_tokens, self.cycles, self.n
        decode = t + mut + cycles * (mut + n * t)
        passes = 2 + max(t, mut) + cycles * (2 + mut + t)
        if self.max_total_tokens is not None:
            decode = min(decode, self.max_total_tokens)
            passes = min(passes, decode + 2 * (cycles + 1))
        reward_items = 1 + cycles * n * math.ceil(t / self.m)
        factors = ("cycles", "n", "mutation_max_tokens", "max_tokens", "m")
        return Cost(decode, passes, reward_items, max(n, 2), factors=factors)

    def memory(self, request: MemoryRequest) -> MemoryPlan:
        """The first answers decoded beside the first mutation lists (2 rows per prompt, padded
        to the mutation request), the n candidates per prompt (``prefix_prefill`` reserves the
        whole cache, then prefills the differing suffixes: the worst case, nothing shared), and
        a replacement round's state transplant. Mutated prompts are taken as long as the original."""
        prompts, width, new, shape = request.prompts, request.width, request.new, request.shape
        first = width + mutation_request_tokens(self.n)
        phases = request.decoding(2 * prompts, 2 * prompts, first, max(new, self.mutation_max_tokens))
        rows = prompts * self.n
        reserved = rows * (width + new) * shape.kv_bytes_per_token
        candidate = request.decoding(rows, rows)
        candidate[0] = Phase(
            "candidate prefill",
            reserved,
            shape.forward_bytes(rows, width, width),
            rows * shape.vocab * (shape.bytes_per_value + 4),
        )
        phases.extend(candidate)
        if new > self.m and self.n > self.k:
            moved, fed = prompts * (self.n - self.k), new - self.m
            phases.append(_replacement_phase(shape, moved, width, fed, reserved, candidate[-1].logits))
        notes = ("DARWIN: mutated prompts taken as long as the original",)
        return MemoryPlan(rows, phases, request.reward_scoring(rows), notes)

    #: how the candidates of a cycle are decoded (called like ``CachedPopulation``); the
    #: benchmarks' re-prefill reference swaps in one that re-encodes every ``m`` tokens
    population: ClassVar[Callable[..., Population]] = CachedPopulation

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        check_mutation_requests_fit(self, run)  # before any model work
        backend = LocalBackend(self, run)
        instructions = backend.instructions
        driver = DarwinDriver(self, backend, instructions, random.Random(run.params.seed))
        run.partial = lambda: local_results(self.name, driver, backend, reward_failed=True)
        driver.run()
        return local_results(self.name, driver, backend)


def _replacement_phase(
    shape: ModelShape, moved: int, width: int, fed: int, reserved: int, logits: int
) -> Phase:
    """A replacement round (``state_transplant``) on ``moved`` rows: building its DynamicCache from
    index copies of their prompt columns holds those copies and the cache's own (torch.cat)
    copies at once; then a forward over the copied answer (at most ``fed`` = max_new_tokens - m
    tokens) grows that cache layer by layer. The larger of the two, beside the candidates' cache."""
    kv, layer = shape.kv_bytes_per_token, shape.kv_bytes_per_layer_token
    build = 2 * moved * width * kv
    forward = moved * (width + fed) * kv + moved * (width + fed) * layer
    if build >= forward + shape.forward_bytes(moved, fed, width + fed):
        return Phase("replacement", reserved + build, 0, logits)
    return Phase("replacement", reserved + forward, shape.forward_bytes(moved, fed, width + fed), logits)


def local_results(
    strategy: str, driver: DarwinDriver, backend: LocalBackend, reward_failed: bool = False
) -> list[StrategyResult]:
    """One ``StrategyResult`` per prompt: every candidate kept (and, after a reward failure, those
    in flight, unscored), the best (ties: earliest), the prompt's own counts, trace and archive."""
    results = []
    for p, state in enumerate(driver.prompts):
        kept = state.candidates + driver.in_flight(p)
        candidates = [candidate_from(_completion(k.answer), k.reward, k.meta) for k in kept]
        best = driver.best(p)
        best = 0 if best is None else best
        flags: dict[str, Any] = {}
        if backend.budget.reason is not None:
            flags["budget_exhausted"] = backend.budget.reason
        if reward_failed:
            flags["reward_failed"] = True
        counters = replace(
            backend.counters,
            prompt_tokens=backend.prompt_tokens[p],
            generated_tokens=backend.generated_tokens[p],
            reward_items=state.reward_items,
        )
        results.append(
            chosen_result(
                strategy,
                candidates,
                best,
                prompt_tokens=len(backend.prompt_ids[p]),
                counters=counters,
                trace=records(state.trace, prompt=p),
                flags=flags,
                details={
                    "cycles_completed": state.cycles_completed,
                    "mutations_dropped": state.mutations_dropped,
                    "archive": [{"instruction": t, "reward": r} for t, r in state.archive.items()],
                },
            )
        )
    return results


def _completion(answer: Answer) -> Completion:
    """The engine completion behind a local answer."""
    assert isinstance(answer, LocalAnswer)
    return answer.completion
