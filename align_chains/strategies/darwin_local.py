"""DARWIN's local backend: first answers, mutation lists and candidates decoded on a local policy.

Every candidate keeps its own KV cache, prefilled once from its own mutated prompt (the prompts'
common prefix once for all, distinct suffixes left-padded into one prefill: ``CachedPopulation``).
A replacement keeps the replaced row's prompt cache and prefills only the copied answer tokens
onto it, one batched forward per replacement round; the prompt is never encoded again. All
prompts of a request share each batch: one decode for the first answers, one for the mutations of
a cycle, one for the candidates of a cycle, and one reward call per segment. The caps of a
request (``max_total_tokens``, ``time_budget_s``) are checked before every decoding step.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from align_chains.cancellation import check_cancelled
from align_chains.engine.decoder import Batch, Completion, Decoder
from align_chains.engine.sampling import SamplingParams, make_generator
from align_chains.errors import InvalidInputError
from align_chains.models.chat import last_user_text
from align_chains.strategies.base import SearchRun, score_texts
from align_chains.strategies.darwin_budget import Budget, BudgetStop
from align_chains.strategies.darwin_driver import Answer, Failed
from align_chains.strategies.darwin_population import CachedPopulation, Population
from align_chains.strategies.mutation import list_complete, mutation_request, with_instruction

if TYPE_CHECKING:
    from align_chains.strategies.darwin import Darwin

# the mutation list is checked for completeness every this many tokens
_MUTATION_CHECK_EVERY = 16


@dataclass(frozen=True)
class LocalAnswer:
    """A row's completion as the search sees it (``tokens``/``finished`` as traced)."""

    completion: Completion
    tokens: int
    finished: bool

    @property
    def text(self) -> str:
        return self.completion.text

    @property
    def key(self) -> Hashable:
        return self.completion.generated_tokens


def check_mutation_requests_fit(strategy: Darwin, run: SearchRun) -> None:
    """Refuse, before any model work, an instruction whose rewrite request cannot fit the context."""
    policy = run.policy
    for conversation in run.conversations:
        request = policy.render(mutation_request(last_user_text(conversation), strategy.n))
        if len(request) + strategy.mutation_max_tokens > policy.context_length:
            raise InvalidInputError(
                f"DARWIN's request to rewrite this instruction has {len(request)} tokens and its "
                f"list may take mutation_max_tokens={strategy.mutation_max_tokens} more, beyond the "
                f"{policy.context_length}-token context of {policy.name!r}. Shorten the last user "
                "message (move context into a system message) or lower mutation_max_tokens."
            )


class LocalBackend:
    """``DarwinBackend`` on a local policy: one engine batch per step, budgets checked per token.

    Per prompt it counts its own ``prompt_tokens`` (prefilled, a shared prefix charged to the
    first prompt that has it) and ``generated_tokens``; ``budget.reason`` names a cap that ran out.
    """

    def __init__(self, strategy: Darwin, run: SearchRun) -> None:
        self.s = strategy
        self.policy, self.reward, self.params = run.policy, run.reward, run.params
        self.mutation_params = SamplingParams(
            max_new_tokens=strategy.mutation_max_tokens,
            temperature=run.params.temperature,
            top_p=run.params.top_p,
            top_k=run.params.top_k,
        )
        self.progress, self.counters = run.progress, run.counters
        self.decoder = Decoder(self.policy, self.counters)
        self.generator = make_generator(self.params.seed, self.policy.device)
        self.budget = Budget(self.counters, strategy.max_total_tokens, strategy.time_budget_s)
        self.conversations = run.conversations
        self.prompt_ids = run.token_ids
        self.instructions = [last_user_text(c) for c in run.conversations]
        self.prompt_tokens = [0] * len(self.prompt_ids)
        self.generated_tokens = [0] * len(self.prompt_ids)
        self.pop: Population | None = None  # the current cycle's candidates
        self.owners: list[int] = []

    # -- the backend -------------------------------------------------------------------
    def first_answers(
        self, instructions: list[str]
    ) -> tuple[bool, list[Answer | Failed], list[str | Failed] | None]:
        """s0 ~ pi(x) for every prompt in one batch.

        Cycle 1's parent can only be x (the archive holds x alone), so when the settings allow
        (no stop strings, which must not cut the list; no grammar, which holds every row of a
        batch and would hold the prose lists too; both caps fit the context) the first cycle's
        mutation lists are decoded in the same batch as s0: one decode instead of two sequential
        ones.
        """
        K = len(self.prompt_ids)
        owners = list(range(K))
        requests = self._mutation_requests(instructions)
        cap = max(self.params.max_new_tokens, self.mutation_params.max_new_tokens)
        merge = (
            not self.params.stop
            and self.params.grammar is None
            and all(len(ids) + cap <= self.policy.context_length for ids in [*requests, *self.prompt_ids])
        )
        texts: list[str | Failed] | None = None
        if merge:
            self.progress.stage(f"first answers and mutations: {2 * K}", cap)
            params = self.mutation_params.model_copy(update={"max_new_tokens": cap})
            pop = self._start([*self.prompt_ids, *requests], params, owners * 2, cached=True)
            caps = [
                (self.params.max_new_tokens, owners),
                (self.mutation_params.max_new_tokens, [K + p for p in owners]),
            ]
            going, listed = self._decode_mutations(pop, owners * 2, [K + p for p in owners], caps)
            texts, done = list(listed), pop.completions()[:K]
        else:
            self.progress.stage(f"first answers: {K}", self.params.max_new_tokens)
            pop = self._start(self.prompt_ids, self.params, owners, cached=True)
            going, done = self._extend(pop, None, owners), pop.completions()
        answers: list[Answer | Failed] = [
            LocalAnswer(c, tokens=len(c.token_ids), finished=c.finish_reason == "stop") for c in done
        ]
        return going, answers, texts

    def mutation_lists(self, cycle: int, parents: list[str]) -> tuple[bool, list[str | Failed]]:
        """Every prompt's list in one decode, each row ended as soon as its list is complete."""
        self.progress.stage(f"cycle {cycle}: mutations", self.mutation_params.max_new_tokens)
        owners = list(range(len(parents)))
        pop = self._start(self._mutation_requests(parents), self.mutation_params, owners, cached=True)
        going, texts = self._decode_mutations(pop, owners, owners, [])
        return going, list(texts)

    def start_candidates(self, cycle: int, parents: list[str], mutations: list[list[str]]) -> None:
        """One candidate per mutation, all prompts in one population (rows grouped by prompt)."""
        n, K = self.s.n, len(mutations)
        self.owners = [p for p in range(K) for _ in range(n)]
        ids = [self._candidate_prompt(p, mutations[p][i], parents[p]) for p in range(K) for i in range(n)]
        self.progress.stage(f"cycle {cycle}: {K * n} candidates", self.params.max_new_tokens)
        self.pop = self._start(ids, self.params, self.owners, cached=False)

    @property
    def exhausted(self) -> bool:
        assert self.pop is not None
        return self.pop.done

    def advance(self) -> bool:
        assert self.pop is not None
        check_cancelled()  # a DARWIN segment is a natural step (its decode steps check too)
        return self._extend(self.pop, self.s.m, self.owners)

    def answers(self) -> list[Answer | Failed]:
        assert self.pop is not None
        finished = self.pop.finished.tolist()
        return [
            LocalAnswer(c, tokens=int(c.generated_tokens), finished=bool(f))
            for c, f in zip(self.pop.completions(), finished, strict=True)
        ]

    def transplant(self, rows: list[int], sources: list[int]) -> None:
        """The copied answers are prefilled on their rows' own prompts (counted as prompt tokens)."""
        assert self.pop is not None
        prefilled = list(self.pop.prompt_tokens)
        self.pop.transplant(rows, sources)
        for p, (now, then) in enumerate(zip(self.pop.prompt_tokens, prefilled, strict=True)):
            self.prompt_tokens[p] += now - then

    def score(self, owners: list[int], texts: list[str]) -> list[float]:
        conversations = [self.conversations[o] for o in owners]
        return score_texts(self.reward, conversations, texts, self.counters, self.progress)

    # -- decoding with budgets ---------------------------------------------------------
    def _start(
        self, prompts: list[list[int]], params: SamplingParams, owners: list[int], cached: bool
    ) -> Population:
        """A population of ``prompts`` (the candidates' through ``Darwin.population``)."""
        make = CachedPopulation if cached else self.s.population
        pop = make(self.decoder, prompts, params, owners, len(self.prompt_ids))
        for p, tokens in enumerate(pop.prompt_tokens):
            self.prompt_tokens[p] += tokens
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
                raise BudgetStop

        stopped = self.budget.exhausted(int((~pop.finished).sum()))
        if not stopped:
            try:
                # a row cap ends rows of ``pop`` by index: those steps must see the whole batch
                pop.extend(steps, self.generator, on_step, compact=after_step is None)
            except BudgetStop:
                stopped = True
        for owner, delta in zip(owners, (pop.num_tokens - before).tolist(), strict=True):
            self.generated_tokens[owner] += int(delta)
        for p, (now, then) in enumerate(zip(pop.prompt_tokens, prefilled, strict=True)):
            self.prompt_tokens[p] += now - then  # re-prefills, if the population does them
        return not stopped

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

    def _mutation_requests(self, parents: list[str]) -> list[list[int]]:
        """The rendered one-shot request to rewrite each prompt's parent instruction."""
        requests = []
        for p, parent in enumerate(parents):
            ids = self.policy.render(mutation_request(parent, self.s.n))
            if len(ids) + self.mutation_params.max_new_tokens > self.policy.context_length:
                ids = self.policy.render(mutation_request(self.instructions[p], self.s.n))  # checked up front
            requests.append(ids)
        return requests

    def _candidate_prompt(self, p: int, instruction: str, parent: str) -> list[int]:
        """The prompt with the mutated instruction; falls back to the parent, then the original."""
        for text in (instruction, parent):
            ids = self.policy.render(with_instruction(self.conversations[p], text))
            if len(ids) + self.params.max_new_tokens <= self.policy.context_length:
                return ids
        return self.prompt_ids[p]
