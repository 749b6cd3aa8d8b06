"""DARWIN's search, written once: s0, then cycles of mutate / segment / select / end of cycle.

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

The search itself never decodes: a ``DarwinBackend`` writes the first answers, the mutation
lists and the candidates' segments, moves partial answers and scores texts. There are two:
``darwin_local.py`` (a local policy, every candidate a KV-cache row: ``Darwin``) and
``chat_models/rerank/darwin_calls.py`` (calls of any LangChain chat model:
``RerankChatModel(strategy="darwin")``). Everything else (parents, parsing, scoring, top k,
copy plan, archive, trace) is here and in ``darwin_archive.py``, so the two cannot drift.

All prompts of a request run in lockstep: each step is one backend call for every prompt, and
each scoring one reward call. A prompt whose candidates a scoring found all ended sits the
remaining segments out (no scoring is recorded or counted for it again), as if searched alone.
A row that fails for good (a call over an API, after its retries) is dropped from the search.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from align_chains.strategies.candidates import best_index
from align_chains.strategies.darwin_archive import copy_plan, evolve_archive, top_k
from align_chains.strategies.darwin_trace import (
    CallFailed,
    CycleEnd,
    MutationFailed,
    Replace,
    Score,
    Seed,
    TraceEvent,
    archive_events,
    mutation_events,
)
from align_chains.strategies.mutation import MutationMode, guard_mutations, parse_mutations, restated


@dataclass(frozen=True)
class Failed:
    """What a backend step gave for a prompt or a row that got nothing (e.g. a call that failed
    after its retries): the error as recorded in the trace, ``"TypeName: message"``."""

    error: str


class Answer(Protocol):
    """A candidate's answer so far, as the search sees it."""

    @property
    def text(self) -> str: ...

    @property
    def tokens(self) -> int:
        """Tokens generated so far (as traced)."""
        ...

    @property
    def finished(self) -> bool:
        """It ended (by itself or at its cap): it is never replaced or continued."""
        ...

    @property
    def key(self) -> Hashable:
        """Changes exactly when the answer does: a reward for an older key is stale."""
        ...


class DarwinBackend(Protocol):
    """What writes DARWIN's answers. Rows are the current cycle's candidates, ``n`` per prompt,
    grouped by prompt (row ``p * n + i`` answers prompt p's mutation i and keeps it)."""

    @property
    def exhausted(self) -> bool:
        """No row of the current cycle can go on (e.g. the decode reached its token cap)."""
        ...

    def first_answers(
        self, instructions: list[str]
    ) -> tuple[bool, list[Answer | Failed], list[str | Failed] | None]:
        """s0 for every prompt; the texts of cycle 1's mutation lists of ``instructions`` too
        when they are written alongside (else None). First: False when out of budget."""
        ...

    def mutation_lists(self, cycle: int, parents: list[str]) -> tuple[bool, list[str | Failed]]:
        """Each prompt's list of ``n`` rewrites of its parent. First: False when out of budget."""
        ...

    def start_candidates(self, cycle: int, parents: list[str], mutations: list[list[str]]) -> None:
        """This cycle's rows: one per mutation, nothing written yet."""
        ...

    def advance(self) -> bool:
        """The next segment of every unfinished row (``m`` tokens, or a whole answer); a row
        that fails for good becomes ``Failed`` in ``answers``. False when out of budget."""
        ...

    def answers(self) -> list[Answer | Failed]:
        """Every row's answer so far."""
        ...

    def transplant(self, rows: list[int], sources: list[int]) -> None:
        """Row ``rows[j]`` takes the partial answer of ``sources[j]`` and keeps its own prompt."""
        ...

    def score(self, owners: list[int], texts: list[str]) -> list[float]:
        """One reward call: ``texts[j]`` against prompt ``owners[j]``'s ORIGINAL conversation."""
        ...


class SearchSettings(Protocol):
    """The settings the search reads (``Darwin``'s)."""

    n: int
    k: int
    cycles: int
    mutation_mode: MutationMode  # "rewrite" (the paper's), "guard" or "restate": see ``Darwin``


@dataclass
class Kept:
    """A candidate the search keeps: its answer, its reward (None: not scored) and its trace fields."""

    answer: Answer
    reward: float | None
    meta: dict[str, Any]


@dataclass
class PromptSearch:
    """One prompt's search: its instruction, archive, candidates so far, trace and reward items."""

    instruction: str
    archive: dict[str, float] = field(default_factory=dict)
    candidates: list[Kept] = field(default_factory=list)
    trace: list[TraceEvent] = field(default_factory=list)
    reward_items: int = 0
    cycles_completed: int = 0
    mutations_dropped: int = 0  # rewrites the guard replaced by their parent


@dataclass
class _Rows:
    """A cycle's rows and what the search knows of each."""

    cycle: int
    mutations: list[list[str]]  # per prompt, its n instructions (as the archive keeps them)
    prompts: list[list[str]]  # per prompt, the instruction each row answers (see ``_answered``)
    answers: list[Answer | Failed]
    rewards: list[float | None]
    scored: list[Hashable]  # the answer key each reward belongs to (None: never scored)
    ended: list[bool]

    def alive(self, first: int, count: int) -> list[tuple[int, Answer]]:
        """(row, answer) of rows ``first .. first + count - 1`` that did not fail (none before the
        cycle's first segment)."""
        rows = range(first, min(first + count, len(self.answers)))
        return [(r, a) for r in rows if not isinstance(a := self.answers[r], Failed)]


def _meta(cycle: int, row: int, mutation: int | None, instruction: str) -> dict[str, Any]:
    return {"cycle": cycle, "row": row, "mutation": mutation, "instruction": instruction}


class DarwinDriver:
    """One DARWIN search over every prompt of a request, through ``backend``.

    ``run()`` searches; then ``prompts[p]`` holds prompt p's candidates, archive and trace,
    ``best(p)`` its answer, and ``in_flight(p)`` (after a reward failure) the candidates of the
    interrupted cycle.
    """

    def __init__(
        self, settings: SearchSettings, backend: DarwinBackend, instructions: list[str], rng: random.Random
    ) -> None:
        self.n, self.k, self.cycles = settings.n, settings.k, settings.cycles
        self.mode = settings.mutation_mode
        self.backend = backend
        self.rng = rng
        self.prompts = [PromptSearch(instruction=text) for text in instructions]
        self.rows: _Rows | None = None  # the current cycle's, while it runs

    def run(self) -> None:
        """s0, then up to ``cycles`` cycles (fewer when the backend runs out of budget)."""
        going, mutation_lists = self._first_answers()
        for cycle in range(1, self.cycles + 1):
            if not going:
                return
            going = self._cycle(cycle, mutation_lists if cycle == 1 else None)

    def best(self, p: int) -> int | None:
        """Index of prompt p's best scored candidate (ties: the earliest), or None."""
        return best_index([kept.reward for kept in self.prompts[p].candidates])

    def in_flight(self, p: int) -> list[Kept]:
        """Prompt p's candidates of the cycle under way, unscored (empty between cycles)."""
        rows = self.rows
        if rows is None:
            return []
        base = p * self.n
        return [
            Kept(answer, None, _meta(rows.cycle, r - base, r - base, rows.prompts[p][r - base]))
            for r, answer in rows.alive(base, self.n)
        ]

    def _score(self, owners: list[int], texts: list[str]) -> list[float]:
        """One counted reward call (none for no texts)."""
        if not texts:
            return []
        scores = self.backend.score(owners, texts)
        for owner in owners:
            self.prompts[owner].reward_items += 1
        return scores

    # -- s0 ----------------------------------------------------------------------------
    def _first_answers(self) -> tuple[bool, list[str | Failed] | None]:
        """s0 for every prompt, scored; seeds each archive with r(x, s0) (-inf when s0 failed,
        so any scored winner beats it). Returns (not out of budget, cycle 1's lists or None)."""
        going, firsts, lists = self.backend.first_answers([s.instruction for s in self.prompts])
        answered = {p: a for p, a in enumerate(firsts) if not isinstance(a, Failed)}
        for p, answer in answered.items():  # kept before scoring, so a failing reward still hands them back
            state = self.prompts[p]
            state.candidates.append(Kept(answer, None, _meta(0, 0, None, state.instruction)))
        texts = [answer.text for answer in answered.values()]
        scores = dict(zip(answered, self._score(list(answered), texts), strict=True))
        for p, (state, answer) in enumerate(zip(self.prompts, firsts, strict=True)):
            if isinstance(answer, Failed):
                state.archive[state.instruction] = -math.inf
                state.trace.append(
                    Seed(cycle=0, instruction=state.instruction, reward=None, failed=answer.error)
                )
                continue
            reward = state.candidates[0].reward = scores[p]
            state.archive[state.instruction] = reward
            state.trace.append(Seed(cycle=0, instruction=state.instruction, reward=reward,
                                    tokens=answer.tokens, finished=answer.finished))  # fmt: skip
        return going, lists

    # -- one cycle ---------------------------------------------------------------------
    def _cycle(self, cycle: int, mutation_lists: list[str | Failed] | None) -> bool:
        """Draw parents, mutate, run the segments, end the cycle; False when out of budget."""
        parents = [self.rng.choice(list(state.archive)) for state in self.prompts]
        for state, parent in zip(self.prompts, parents, strict=True):
            state.trace.extend(archive_events(state.archive, cycle, parent))
        if mutation_lists is None:
            going, mutation_lists = self.backend.mutation_lists(cycle, parents)
            if not going:
                return False
        mutations = self._parse_mutations(cycle, parents, mutation_lists)
        prompts = [[self._answered(p, text) for text in texts] for p, texts in enumerate(mutations)]
        answered_parents = [self._answered(p, parent) for p, parent in enumerate(parents)]
        self.backend.start_candidates(cycle, answered_parents, prompts)
        size = self.n * len(self.prompts)
        self.rows = _Rows(cycle, mutations, prompts, [], [None] * size, [None] * size, [False] * size)
        wins = [Counter[int]() for _ in self.prompts]
        going = self._segments(cycle, wins)
        for p, parent in enumerate(parents):
            self._end_cycle(p, parent, wins[p], archive=going)
        self.rows = None
        return going

    def _parse_mutations(self, cycle: int, parents: list[str], lists: list[str | Failed]) -> list[list[str]]:
        """Each prompt's n instructions (the parent where its list falls short or failed), traced."""
        out = []
        for state, parent, listed in zip(self.prompts, parents, lists, strict=True):
            if isinstance(listed, Failed):
                state.trace.append(MutationFailed(cycle=cycle, parent_instruction=parent, error=listed.error))
            parsed = parse_mutations("" if isinstance(listed, Failed) else listed, self.n, parent)
            dropped: list[str | None] | None = None
            if self.mode == "guard":
                parsed, dropped = guard_mutations(parsed, state.instruction, parent)
                state.mutations_dropped += sum(d is not None for d in dropped)
            out.append(parsed.instructions)
            state.trace.extend(mutation_events(cycle, parent, parsed, dropped))
        return out

    def _answered(self, p: int, instruction: str) -> str:
        """The instruction a candidate of prompt p is decoded under: in ``restate`` mode the
        original verbatim plus the mutation as guidance, else the mutation itself."""
        if self.mode == "restate":
            return restated(self.prompts[p].instruction, instruction)
        return instruction

    def _ended(self, p: int) -> bool:
        assert self.rows is not None
        return all(self.rows.ended[p * self.n : (p + 1) * self.n])

    def _segments(self, cycle: int, wins: list[Counter[int]]) -> bool:
        """Segment / select until a scoring has found every row ended; False when out of budget.

        A prompt takes part until one of its scorings finds all its rows ended (or the budget ran
        out): a copy that leaves its rows finished still gets the next scoring, which records them.
        """
        prompts = range(len(self.prompts))
        live, going, segment = [True for _ in prompts], True, 0
        while any(live):
            segment += 1
            going = self._segment(cycle, segment)
            last = [not going or self._ended(p) for p in prompts]
            copies = [
                copy
                for p in prompts
                if live[p]
                for copy in self._select(p, cycle, segment, wins[p], replace=not last[p])
            ]
            live = [live[p] and not last[p] for p in prompts]
            if copies:
                self._transplant(copies)
        return going

    def _segment(self, cycle: int, segment: int) -> bool:
        """The next segment of every unfinished row, then one reward call over the rows that
        changed since their last scoring (the others keep theirs); False when out of budget."""
        rows = self.rows
        assert rows is not None
        going = self.backend.advance()
        answers = self.backend.answers()
        for r, answer in enumerate(answers):
            if isinstance(answer, Failed) and not rows.ended[r]:
                p, i = divmod(r, self.n)
                self.prompts[p].trace.append(
                    CallFailed(cycle=cycle, segment=segment, row=i, mutation=i, error=answer.error)
                )
        exhausted = self.backend.exhausted
        rows.answers = answers
        rows.ended = [isinstance(a, Failed) or a.finished or exhausted for a in answers]
        stale = [(r, a) for r, a in rows.alive(0, len(answers)) if a.key != rows.scored[r]]
        scores = self._score([r // self.n for r, _ in stale], [a.text for _, a in stale])
        for (r, answer), score in zip(stale, scores, strict=True):
            rows.rewards[r], rows.scored[r] = score, answer.key
        return going

    def _select(
        self, p: int, cycle: int, segment: int, wins: Counter[int], replace: bool
    ) -> list[tuple[int, int]]:
        """Prompt p's top k by reward (wins credited to each row's own mutation), traced; unless
        this was its last scoring, (row, source) for every unfinished row outside the top k: it
        takes the partial answer of a random top-k row and keeps its own mutation."""
        rows, base = self.rows, p * self.n
        assert rows is not None
        alive = rows.alive(base, self.n)
        group = [r for r, _ in alive]
        top = top_k(group, rows.rewards, self.k)
        wins.update(r - base for r in top)
        self.prompts[p].trace.extend(
            Score(cycle=cycle, segment=segment, row=r - base, mutation=r - base, reward=rows.rewards[r],
                  tokens=answer.tokens, finished=answer.finished, top_k=r in top)
            for r, answer in alive
        )  # fmt: skip
        if not replace:
            return []
        finished = [not isinstance(a, Failed) and a.finished for a in rows.answers]
        copies = copy_plan(group, top, finished, self.rng)
        self.prompts[p].trace.extend(
            Replace(cycle=cycle, segment=segment, row=r - base, source=source - base, reward=rows.rewards[r],
                    source_reward=rows.rewards[source], mutation=r - base, source_mutation=source - base)
            for r, source in copies
        )  # fmt: skip
        return copies

    def _transplant(self, copies: Sequence[tuple[int, int]]) -> None:
        """Every copy at once: the backend moves the answers, the rows take the sources' rewards."""
        rows = self.rows
        assert rows is not None
        self.backend.transplant([r for r, _ in copies], [source for _, source in copies])
        for r, source in copies:  # a source is a top row, never itself replaced
            rows.answers[r], rows.rewards[r] = rows.answers[source], rows.rewards[source]
            rows.scored[r], rows.ended[r] = rows.scored[source], rows.ended[source]

    def _end_cycle(self, p: int, parent: str, wins: Counter[int], archive: bool) -> None:
        """Keep prompt p's candidates; unless a budget cut the cycle short (or every row failed),
        evolve the archive."""
        rows, state, base = self.rows, self.prompts[p], p * self.n
        assert rows is not None
        alive = rows.alive(base, self.n)
        mutations = rows.mutations[p]
        state.candidates.extend(
            Kept(answer, rows.rewards[r], _meta(rows.cycle, r - base, r - base, rows.prompts[p][r - base]))
            for r, answer in alive
        )
        if archive and alive:
            final = [(r - base, rows.rewards[r]) for r, _ in alive]
            state.trace.extend(evolve_archive(state.archive, rows.cycle, parent, mutations, wins, final))
            state.cycles_completed = rows.cycle
        best = self.best(p)
        scored = [reward for r, _ in alive if (reward := rows.rewards[r]) is not None]
        state.trace.append(
            CycleEnd(cycle=rows.cycle, reward=max(scored, default=None),
                     best_reward=None if best is None else state.candidates[best].reward)
        )  # fmt: skip
