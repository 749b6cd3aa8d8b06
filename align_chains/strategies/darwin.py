"""DARWIN: evolutionary search over mutated instructions with reward-guided replacement.

Hung et al., arXiv 2406.15193. Exploration decodes from rewrites ("mutations") of the user's
instruction; exploitation replaces, every ``m`` tokens, the partial answers of poorly rewarded
unfinished candidates with those of well-rewarded ones. Per prompt::

    s0 ~ pi(x); archive A = {x: r(x, s0)}
    repeat cycles times:
        x_c ~ uniform(A); the policy rewrites x_c into n instructions (one-shot prompt)
        decode one candidate per instruction; every m tokens score all against the ORIGINAL x,
        keep the top k, and give every other unfinished candidate the partial answer of a random
        top-k one; it goes on decoding under ITS OWN instruction (all n instructions stay explored)
        add to A the (up to) two mutations most often in the top k whose final reward beats A[x_c];
        a parent that a mutation beat leaves A
    return the best response of all cycles, s0 included

How it runs here: every candidate keeps its own KV cache, prefilled once from its own
mutated prompt (the prompts' common prefix once for all, distinct suffixes left-padded into one
prefill). A replacement (``state_transplant.py``) keeps the replaced row's prompt cache and
prefills only the copied answer tokens onto it, one batched forward per replacement round; the
prompt is never encoded again. All prompts of a request share each batch: one decode for the
first answers, one for the mutations of a cycle, one for the candidates of a cycle, and one
reward call per segment. The authors' code instead re-encodes every prompt and partial answer
every ``m`` tokens; ``darwin_reference.py`` does that for comparison.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import torch
from pydantic import Field, model_validator

from align_chains.cancellation import check_cancelled
from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Batch, Completion, Decoder
from align_chains.engine.memory import ModelShape, Phase
from align_chains.engine.sampling import SamplingParams, make_generator
from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation, last_user_text
from align_chains.strategies.base import (
    Candidate,
    SearchRun,
    Strategy,
    StrategyResult,
    register_strategy,
    score_texts,
)
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.darwin_trace import (
    CycleEnd,
    Replace,
    Score,
    Seed,
    TraceEvent,
    Winner,
    archive_events,
    finite,
    mutation_events,
    records,
)
from align_chains.strategies.declarations import Bound, Cost, MemoryPlan, MemoryRequest
from align_chains.strategies.mutation import (
    list_complete,
    mutation_request,
    mutation_request_tokens,
    parse_mutations,
    with_instruction,
)
from align_chains.strategies.prefix_prefill import start_sharing_prefix
from align_chains.strategies.state_transplant import supports_transplant, transplant_states

# the mutation list is checked for completeness every this many tokens
_MUTATION_CHECK_EVERY = 16


class Population(Protocol):
    """Candidate rows decoded in lockstep; what the search needs from a decoding backend."""

    prompt_tokens: list[int]  # prompt tokens prefilled so far, per owner (user prompt)

    @property
    def finished(self) -> torch.Tensor: ...

    @property
    def num_tokens(self) -> torch.Tensor: ...

    @property
    def done(self) -> bool: ...

    def extend(self, steps: int | None, generator: Any, on_step: Callable[[Batch], None]) -> None: ...

    def completions(self) -> list[Completion]: ...

    def transplant(self, rows: Sequence[int], sources: Sequence[int]) -> None:
        """Row ``rows[j]`` takes the partial answer of ``sources[j]`` and keeps its own prompt."""
        ...

    def finish(self, rows: Sequence[int], stopped: bool = True) -> None: ...


class CachedPopulation:
    """Rows of one engine ``Batch``: each prompt prefilled once (their common prefix once for
    all); a replacement prefills only the copied answer onto the row's own prompt cache."""

    def __init__(
        self,
        decoder: Decoder,
        prompts: list[list[int]],
        params: SamplingParams,
        owners: list[int],
        num_owners: int,
    ) -> None:
        self.decoder = decoder
        self.batch, charged = start_sharing_prefix(decoder, prompts, params)
        self.owners = list(owners)
        self.prompt_tokens = [0] * num_owners
        for owner, tokens in zip(owners, charged, strict=True):
            self.prompt_tokens[owner] += tokens
        if not supports_transplant(self.batch.cache):
            raise InvalidInputError(
                f"DARWIN's replacement keeps each candidate's own prompt cache and prefills only the copied "
                f"answer onto it, which needs a full-attention KV cache; {decoder.policy.name!r} uses "
                "sliding-window or quantized cache layers. Use a model with a plain (dynamic) KV cache."
            )

    @property
    def finished(self) -> torch.Tensor:
        return self.batch.finished

    @property
    def num_tokens(self) -> torch.Tensor:
        return self.batch.num_tokens

    @property
    def done(self) -> bool:
        return self.batch.done

    def extend(self, steps: int | None, generator: Any, on_step: Callable[[Batch], None]) -> None:
        self.decoder.extend(self.batch, steps, generator, on_step)

    def completions(self) -> list[Completion]:
        return self.decoder.completions(self.batch)

    def transplant(self, rows: Sequence[int], sources: Sequence[int]) -> None:
        prefilled = transplant_states(self.decoder, self.batch, rows, sources)
        for row, tokens in zip(rows, prefilled, strict=True):
            self.prompt_tokens[self.owners[row]] += tokens

    def finish(self, rows: Sequence[int], stopped: bool = True) -> None:
        """End unfinished rows early: as stopped (a complete list) or by length (a per-row cap)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.batch.finished.device)
        index = index[~self.batch.finished[index]]
        self.batch.finished[index] = True
        self.batch.stopped[index] = stopped


def check_k_at_most_n(k: int, n: int) -> None:
    """DARWIN's rule across settings (one home for it): the top ``k`` are kept out of ``n``."""
    if k > n:
        raise ValueError(
            f"k={k} must not exceed n={n}: the top k are kept out of n candidates; lower k or raise n."
        )


class _BudgetStop(Exception):
    """Raised from a decoding step when a budget would be overrun by the next step."""


class _Budget:
    """Per-request caps on generated tokens and wall seconds; remembers which one ran out."""

    def __init__(self, counters: ComputeCounters, max_tokens: int | None, seconds: float | None) -> None:
        self.counters = counters
        self.max_tokens = max_tokens
        self.deadline = None if seconds is None else time.perf_counter() + seconds
        self.reason: str | None = None

    def exhausted(self, next_rows: int) -> bool:
        """Whether a step generating ``next_rows`` tokens must not run."""
        if self.reason is None:
            if self.max_tokens is not None and self.counters.generated_tokens + next_rows > self.max_tokens:
                self.reason = "max_total_tokens"
            elif self.deadline is not None and time.perf_counter() >= self.deadline:
                self.reason = "time_budget_s"
        return self.reason is not None


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
        "the instruction itself limits the answer; long shared context (cache reuse pays most there)",
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

    def population(
        self,
        decoder: Decoder,
        prompts: list[list[int]],
        params: SamplingParams,
        owners: list[int],
        num_owners: int,
    ) -> Population:
        """The decoding backend of the candidate phase (the reference re-prefills instead)."""
        return CachedPopulation(decoder, prompts, params, owners, num_owners)

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        policy, params = run.policy, run.params
        mutation_params = SamplingParams(
            max_new_tokens=self.mutation_max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
        )
        for conversation in run.conversations:  # before any model work
            request = policy.render(mutation_request(last_user_text(conversation), self.n))
            if len(request) + self.mutation_max_tokens > policy.context_length:
                raise InvalidInputError(
                    f"DARWIN's request to rewrite this instruction has {len(request)} tokens and its "
                    f"list may take mutation_max_tokens={self.mutation_max_tokens} more, beyond the "
                    f"{policy.context_length}-token context of {policy.name!r}. Shorten the last user "
                    "message (move context into a system message) or lower mutation_max_tokens."
                )
        search = _Search(self, run, mutation_params)
        run.partial = lambda: search._results(reward_failed=True)
        search._search()
        return search._results()


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


@dataclass
class _PromptState:
    """One user prompt's search: archive, candidates so far, trace and its own work counts."""

    conversation: Conversation
    instruction: str
    prompt_ids: list[int]
    archive: dict[str, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    trace: list[TraceEvent] = field(default_factory=list)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    reward_items: int = 0
    cycles_completed: int = 0


@dataclass
class _Rows:
    """A cycle's candidate rows (grouped by prompt, n each) and what the search knows of each."""

    pop: Population
    owners: list[int]  # the prompt of each row
    lineage: list[int]  # the mutation each row decodes from
    rewards: list[float | None]
    scored_at: list[int]  # tokens a row had when last scored
    done: list[Completion] = field(default_factory=list)  # completions at the last scoring

    def transplant(self, index: list[int]) -> None:
        """Row r takes the partial answer of row index[r] (and its reward: same text, same score)
        but keeps its own mutation: ``lineage`` does not change."""
        moved = [r for r, source in enumerate(index) if source != r]
        self.pop.transplant(moved, [index[r] for r in moved])
        self.rewards = [self.rewards[i] for i in index]
        self.scored_at = [self.scored_at[i] for i in index]


class _Search:
    """One ``run_batch`` call: all prompts searched together, batch by batch."""

    def __init__(self, strategy: Darwin, run: SearchRun, mutation_params: SamplingParams) -> None:
        self.s = strategy
        self.policy, self.reward, self.params = run.policy, run.reward, run.params
        self.mutation_params = mutation_params
        self.progress = run.progress
        self.counters = run.counters
        self.decoder = Decoder(self.policy, self.counters)
        self.generator = make_generator(self.params.seed, self.policy.device)
        self.rng = random.Random(self.params.seed)
        self.budget = _Budget(self.counters, strategy.max_total_tokens, strategy.time_budget_s)
        self.prompts = [
            _PromptState(conversation=c, instruction=last_user_text(c), prompt_ids=ids)
            for c, ids in zip(run.conversations, run.token_ids, strict=True)
        ]
        self.unscored: list[list[Candidate]] = [[] for _ in self.prompts]  # in flight at a failure

    # -- driver ------------------------------------------------------------------------
    def _search(self) -> None:
        going, first_mutations = self._first_answers()
        if not going:
            return
        for cycle in range(1, self.s.cycles + 1):
            if not self._cycle(cycle, first_mutations if cycle == 1 else None):
                return

    # -- decoding with budgets ---------------------------------------------------------
    def _start(
        self, prompts: list[list[int]], params: SamplingParams, owners: list[int], cached: bool
    ) -> Population:
        make = CachedPopulation if cached else self.s.population
        pop = make(self.decoder, prompts, params, owners, len(self.prompts))
        for state, tokens in zip(self.prompts, pop.prompt_tokens, strict=True):
            state.prompt_tokens += tokens
        return pop

    def _extend(
        self,
        pop: Population,
        steps: int | None,
        owners: list[int],
        after_step: Callable[[Batch], None] | None = None,
    ) -> bool:
        """Decode up to ``steps`` tokens (None: to the end); False when a budget stopped it."""
        before, prefilled = pop.num_tokens.clone(), list(pop.prompt_tokens)

        def on_step(batch: Batch) -> None:
            self.progress.advance()
            if after_step is not None:
                after_step(batch)
            if not batch.done and self.budget.exhausted(int((~batch.finished).sum())):
                raise _BudgetStop

        stopped = self.budget.exhausted(int((~pop.finished).sum()))
        if not stopped:
            try:
                pop.extend(steps, self.generator, on_step)
            except _BudgetStop:
                stopped = True
        for owner, delta in zip(owners, (pop.num_tokens - before).tolist(), strict=True):
            self.prompts[owner].generated_tokens += int(delta)
        for state, now, then in zip(self.prompts, pop.prompt_tokens, prefilled, strict=True):
            state.prompt_tokens += now - then  # re-prefills, if the backend does them
        return not stopped

    def _score(self, owners: Sequence[int], texts: Sequence[str]) -> list[float]:
        """One counted reward call, every text scored against its prompt's ORIGINAL conversation."""
        if not texts:
            return []
        scores = score_texts(
            self.reward, [self.prompts[o].conversation for o in owners], texts, self.counters, self.progress
        )
        for owner in owners:
            self.prompts[owner].reward_items += 1
        return scores

    # -- s0 ----------------------------------------------------------------------------
    def _first_answers(self) -> tuple[bool, list[str] | None]:
        """s0 ~ pi(x) for every prompt in one batch; seeds each archive with r(x, s0).

        Cycle 1's parent can only be x (the archive holds x alone), so when the settings allow
        (no stop strings, which must not cut the list; no grammar, which holds every row of a
        batch and would hold the prose lists too; both caps fit the context) the first cycle's
        mutation lists are decoded in the same batch as s0: one decode instead of two sequential
        ones. Returns (not out of budget, the mutation texts or None).
        """
        K = len(self.prompts)
        owners = list(range(K))
        requests = self._mutation_requests([s.instruction for s in self.prompts])
        cap = max(self.params.max_new_tokens, self.mutation_params.max_new_tokens)
        limit = self.policy.context_length
        merge = (
            not self.params.stop
            and self.params.grammar is None
            and all(len(ids) + cap <= limit for ids in [*requests, *(s.prompt_ids for s in self.prompts)])
        )
        if merge:
            self.progress.stage(f"first answers and mutations: {2 * K}", cap)
            params = self.mutation_params.model_copy(update={"max_new_tokens": cap})
            pop = self._start(
                [s.prompt_ids for s in self.prompts] + requests, params, owners * 2, cached=True
            )
            caps = [
                (self.params.max_new_tokens, owners),
                (self.mutation_params.max_new_tokens, [K + p for p in owners]),
            ]
            going, texts = self._decode_mutations(pop, owners * 2, [K + p for p in owners], caps)
            done = pop.completions()[:K]
        else:
            self.progress.stage(f"first answers: {K}", self.params.max_new_tokens)
            pop = self._start([s.prompt_ids for s in self.prompts], self.params, owners, cached=True)
            going, texts = self._extend(pop, None, owners), None
            done = pop.completions()
        for p, c in enumerate(done):
            self.unscored[p] = [
                _candidate(c, None, cycle=0, row=0, mutation=None, instruction=self.prompts[p].instruction)
            ]
        scores = self._score(owners, [c.text for c in done])
        for state, c, score in zip(self.prompts, done, scores, strict=True):
            state.candidates.append(
                _candidate(c, score, cycle=0, row=0, mutation=None, instruction=state.instruction)
            )
            state.archive[state.instruction] = score
            state.trace.append(
                Seed(cycle=0, instruction=state.instruction, reward=score, tokens=len(c.token_ids),
                     finished=c.finish_reason == "stop")
            )  # fmt: skip
        self.unscored = [[] for _ in self.prompts]
        return going, texts

    # -- one cycle: mutate, then segment / select until the candidates end, then end the cycle ----
    def _cycle(self, cycle: int, mutation_texts: list[str] | None = None) -> bool:
        """One cycle for every prompt; False when a budget stopped it."""
        K = len(self.prompts)
        parents = [self.rng.choice(list(state.archive)) for state in self.prompts]
        for state, parent in zip(self.prompts, parents, strict=True):
            state.trace.extend(archive_events(state.archive, cycle, parent))
        if mutation_texts is None:
            self.progress.stage(f"cycle {cycle}: mutations", self.mutation_params.max_new_tokens)
            requests = self._mutation_requests(parents)
            pop = self._start(requests, self.mutation_params, list(range(K)), cached=True)
            going, mutation_texts = self._decode_mutations(pop, list(range(K)), list(range(K)), [])
            if not going:
                return False
        mutations = self._parse_mutations(cycle, parents, mutation_texts)
        rows = self._start_candidates(cycle, parents, mutations)
        wins = [Counter[int]() for _ in range(K)]
        segment = 0
        while True:
            check_cancelled()  # a DARWIN segment is a natural step (its decode steps check too)
            segment += 1
            going = self._segment(rows, cycle, mutations)
            last = rows.pop.done or not going
            index = list(range(len(rows.owners)))
            finished = rows.pop.finished.tolist()
            for p in range(K):
                self._select(p, rows, cycle, segment, wins[p], finished, None if last else index)
            if last:
                break
            if index != list(range(len(rows.owners))):
                prefilled = list(rows.pop.prompt_tokens)
                rows.transplant(index)
                for state, now, then in zip(self.prompts, rows.pop.prompt_tokens, prefilled, strict=True):
                    state.prompt_tokens += now - then  # the copied answers prefilled on their new prompts
        for p in range(K):
            self._end_cycle(p, rows, cycle, parents[p], mutations[p], wins[p], archive=going)
        self.unscored = [[] for _ in self.prompts]
        return going

    def _start_candidates(self, cycle: int, parents: list[str], mutations: list[list[str]]) -> _Rows:
        """One candidate per mutation, all prompts in one population (rows grouped by prompt)."""
        n, K = self.s.n, len(self.prompts)
        owners = [p for p in range(K) for _ in range(n)]
        cand_ids = [
            self._candidate_prompt(p, mutations[p][i], parents[p]) for p in range(K) for i in range(n)
        ]
        self.progress.stage(f"cycle {cycle}: {K * n} candidates", self.params.max_new_tokens)
        pop = self._start(cand_ids, self.params, owners, cached=False)
        return _Rows(
            pop=pop,
            owners=owners,
            lineage=[i for _ in range(K) for i in range(n)],
            rewards=[None] * (K * n),
            scored_at=[-1] * (K * n),
        )

    def _segment(self, rows: _Rows, cycle: int, mutations: list[list[str]]) -> bool:
        """The next m tokens of every unfinished row, then one reward call over the rows that
        changed since their last scoring (finished rows keep theirs); False when out of budget."""
        n = self.s.n
        going = self._extend(rows.pop, self.s.m, rows.owners)
        done = rows.done = rows.pop.completions()
        self.unscored = [
            [_candidate(done[r], None, cycle, r - p * n, rows.lineage[r], mutations[p][rows.lineage[r]])
             for r in range(p * n, (p + 1) * n)]
            for p in range(len(self.prompts))
        ]  # fmt: skip
        stale = [r for r in range(len(done)) if done[r].generated_tokens != rows.scored_at[r]]
        scores = self._score([rows.owners[r] for r in stale], [done[r].text for r in stale])
        for r, score in zip(stale, scores, strict=True):
            rows.rewards[r], rows.scored_at[r] = score, done[r].generated_tokens
        return going

    def _select(
        self,
        p: int,
        rows: _Rows,
        cycle: int,
        segment: int,
        wins: Counter[int],
        finished: list[bool],
        index: list[int] | None,
    ) -> None:
        """Prompt p's top k by reward (wins credited to each row's own mutation); unless this was the
        last scoring (``index`` None), every unfinished row outside it takes the partial answer of a
        random top-k row (written into ``index``) and keeps its own mutation."""
        n, state = self.s.n, self.prompts[p]
        group = range(p * n, (p + 1) * n)
        top = top_k(group, rows.rewards, self.s.k)
        wins.update(rows.lineage[r] for r in top)
        state.trace.extend(
            Score(cycle=cycle, segment=segment, row=r - p * n, mutation=rows.lineage[r],
                  reward=rows.rewards[r], tokens=int(rows.done[r].generated_tokens),
                  finished=bool(finished[r]), top_k=r in top)
            for r in group
        )  # fmt: skip
        if index is None:
            return
        for r, source in copy_plan(group, top, finished, self.rng):
            index[r] = source
            state.trace.append(
                Replace(cycle=cycle, segment=segment, row=r - p * n, source=source - p * n,
                        reward=rows.rewards[r], source_reward=rows.rewards[source],
                        mutation=rows.lineage[r], source_mutation=rows.lineage[source])
            )  # fmt: skip

    def _end_cycle(
        self,
        p: int,
        rows: _Rows,
        cycle: int,
        parent: str,
        mutations: list[str],
        wins: Counter[int],
        archive: bool,
    ) -> None:
        """Keep prompt p's candidates; unless a budget cut the cycle short, evolve the archive."""
        n, state = self.s.n, self.prompts[p]
        group = range(p * n, (p + 1) * n)
        state.candidates.extend(
            _candidate(rows.done[r], rows.rewards[r], cycle, r - p * n, rows.lineage[r],
                       mutations[rows.lineage[r]])
            for r in group
        )  # fmt: skip
        if archive:
            final = [(rows.lineage[r], rows.rewards[r]) for r in group]
            state.trace.extend(evolve_archive(state.archive, cycle, parent, mutations, wins, final))
            state.cycles_completed = cycle
        state.trace.append(
            CycleEnd(cycle=cycle, reward=max(_value(rows.rewards[r]) for r in group),
                     best_reward=_best(state)[1])
        )  # fmt: skip

    def _mutation_requests(self, parents: list[str]) -> list[list[int]]:
        """The rendered one-shot request to rewrite each prompt's parent instruction."""
        requests = []
        for state, parent in zip(self.prompts, parents, strict=True):
            ids = self.policy.render(mutation_request(parent, self.s.n))
            if len(ids) + self.mutation_params.max_new_tokens > self.policy.context_length:
                ids = self.policy.render(mutation_request(state.instruction, self.s.n))  # checked up front
            requests.append(ids)
        return requests

    def _decode_mutations(
        self,
        pop: Population,
        owners: list[int],
        list_rows: list[int],
        caps: list[tuple[int, list[int]]],
    ) -> tuple[bool, list[str]]:
        """Decode until done, ending a list row once its list is complete; rows in ``caps`` end
        at their own token cap. Returns (not out of budget, the texts of ``list_rows``)."""

        def cap_rows(batch: Batch) -> None:
            for cap, rows in caps:
                if batch.steps == cap:
                    pop.finish(rows, stopped=False)

        going, texts = True, [""] * len(list_rows)
        while going and not pop.done:
            going = self._extend(pop, _MUTATION_CHECK_EVERY, owners, cap_rows if caps else None)
            done = pop.completions()
            texts = [done[r].text for r in list_rows]
            finished = pop.finished.tolist()
            complete = [
                r for r, text in zip(list_rows, texts, strict=True)
                if not finished[r] and list_complete(text, self.s.n)
            ]  # fmt: skip
            if complete:
                pop.finish(complete)
        return going, texts

    def _parse_mutations(self, cycle: int, parents: list[str], texts: list[str]) -> list[list[str]]:
        """Each prompt's n instructions (the parent where the list falls short), traced."""
        out = []
        for state, parent, text in zip(self.prompts, parents, texts, strict=True):
            parsed = parse_mutations(text, self.s.n, parent)
            out.append(parsed.instructions)
            state.trace.extend(mutation_events(cycle, parent, parsed))
        return out

    def _candidate_prompt(self, p: int, instruction: str, parent: str) -> list[int]:
        """The prompt with the mutated instruction; falls back to the parent, then the original."""
        state = self.prompts[p]
        for text in (instruction, parent):
            ids = self.policy.render(with_instruction(state.conversation, text))
            if len(ids) + self.params.max_new_tokens <= self.policy.context_length:
                return ids
        return state.prompt_ids

    # -- results -----------------------------------------------------------------------
    def _results(self, reward_failed: bool = False) -> list[StrategyResult]:
        results = []
        for p, state in enumerate(self.prompts):
            candidates = state.candidates + self.unscored[p]
            best, reward = _best(state)
            if best is None:
                best = 0
            flags: dict[str, Any] = {}
            if self.budget.reason is not None:
                flags["budget_exhausted"] = self.budget.reason
            if reward_failed:
                flags["reward_failed"] = True
            counters = replace(
                self.counters,
                prompt_tokens=state.prompt_tokens,
                generated_tokens=state.generated_tokens,
                reward_items=state.reward_items,
            )
            trace = records(state.trace, prompt=p)
            results.append(
                StrategyResult(
                    strategy=self.s.name,
                    text=candidates[best].text,
                    reward=reward,
                    candidates=candidates,
                    best_index=best,
                    prompt_tokens=len(state.prompt_ids),
                    counters=counters,
                    trace=trace,
                    flags=flags,
                    details={
                        "cycles_completed": state.cycles_completed,
                        "archive": [{"instruction": t, "reward": r} for t, r in state.archive.items()],
                    },
                )
            )
        return results


def archive_winners(
    wins: Counter[int], final: Sequence[tuple[int, float | None]], parent_reward: float
) -> list[tuple[int, float | None, bool]]:
    """The two mutations most often in the top k, their best final reward, and whether it beats the parent.

    ``wins`` counts, per mutation, how often a row decoding from it was in the top k at a
    scoring; ``final`` is (mutation, final reward) per row at the end of the cycle. Ties in
    wins go to the higher final reward, then the lower mutation index. A winner that no row
    carries any more (all its rows were replaced) has no final reward and is not added.
    """
    best_final: dict[int, float] = {}
    for mutation, value in final:
        if value is not None:
            best_final[mutation] = max(best_final.get(mutation, value), value)
    ranked = sorted(wins, key=lambda i: (-wins[i], -best_final.get(i, float("-inf")), i))[:2]
    out = []
    for i in ranked:
        value = best_final.get(i)
        out.append((i, value, value is not None and value > parent_reward))
    return out


def update_archive(
    archive: dict[str, float],
    parent: str,
    mutations: Sequence[str],
    wins: Counter[int],
    final: Sequence[tuple[int, float | None]],
) -> list[tuple[int, float | None, bool]]:
    """Add to ``archive`` the winners (``archive_winners``) that beat ``archive[parent]``; return them all.

    As in the authors' ``utils.py``: an added instruction takes its new reward (replacing an older
    entry of the same text), and a parent that a different instruction beat leaves the archive, so
    later cycles stop re-drawing it. The archive never empties: a parent leaves only for a winner.
    """
    winners = archive_winners(wins, final, archive[parent])
    new: dict[str, float] = {}  # the same text twice (a list that fell back to its parent): the better
    for i, value, added in winners:
        if added:
            assert value is not None
            new[mutations[i]] = max(value, new.get(mutations[i], value))
    archive.update(new)
    if any(text != parent for text in new):
        archive.pop(parent, None)
    return winners


def evolve_archive(
    archive: dict[str, float],
    cycle: int,
    parent: str,
    mutations: Sequence[str],
    wins: Counter[int],
    final: Sequence[tuple[int, float | None]],
) -> list[Winner]:
    """``update_archive`` at the end of a cycle, as the trace's ``Winner`` events."""
    threshold = finite(archive[parent])
    return [
        Winner(cycle=cycle, mutation=i, instruction=mutations[i], wins=wins[i], reward=value,
               parent_reward=threshold, added=added)
        for i, value, added in update_archive(archive, parent, mutations, wins, final)
    ]  # fmt: skip


def top_k(rows: Sequence[int], rewards: Sequence[float | None], k: int) -> list[int]:
    """The ``k`` best of ``rows`` by ``rewards[row]`` (unscored last; ties: lower row first)."""
    return sorted(rows, key=lambda r: (-_value(rewards[r]), r))[:k]


def copy_plan(
    rows: Sequence[int], top: Sequence[int], finished: Sequence[bool], rng: random.Random
) -> list[tuple[int, int]]:
    """(row, source) for every unfinished row outside ``top``: it takes a random top row's answer.

    Rows are visited in order and each draws one ``rng.choice``, so a seeded search replays.
    """
    top = list(top)
    return [(r, rng.choice(top)) for r in rows if r not in top and not finished[r]]


def _value(reward: float | None) -> float:
    return float("-inf") if reward is None else reward


def _best(state: _PromptState) -> tuple[int | None, float | None]:
    """Index and reward of the best scored candidate (ties: earliest), or (None, None)."""
    scored = [i for i, c in enumerate(state.candidates) if c.reward is not None]
    if not scored:
        return None, None
    best = max(scored, key=lambda i: (state.candidates[i].reward, -i))
    return best, state.candidates[best].reward


def _candidate(
    c: Completion, reward: float | None, cycle: int, row: int, mutation: int | None, instruction: str | None
) -> Candidate:
    return Candidate(
        text=c.text,
        reward=reward,
        token_ids=c.token_ids,
        logprobs=c.logprobs,
        finish_reason=c.finish_reason,
        meta={"cycle": cycle, "row": row, "mutation": mutation, "instruction": instruction},
    )
