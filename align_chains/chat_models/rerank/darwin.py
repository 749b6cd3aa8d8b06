"""DARWIN over any LangChain chat model, without cache reuse: ``RerankChatModel(strategy="darwin")``.

The same search as ``strategies/darwin.py`` (Hung et al., arXiv 2406.15193), with the wrapped
chat model as the policy: s0 seeds the archive; each cycle draws a parent instruction from the
archive, the WRAPPED model rewrites it into ``n`` instructions (``mutation.py``'s one-shot
request and parser), one candidate answers each, and the candidates are scored against the
ORIGINAL conversation; the archive gains the winners that beat their parent; the best answer of
all cycles is returned. Top-k, copy choice and archive updates are ``strategies/darwin.py``'s
own functions, and the trace is ``strategies/darwin_trace.py``'s events, so the two searches
read side by side: ``_cycle`` runs ``_segment`` / ``_select`` until every candidate has ended,
then ``_end_cycle``.

An API keeps no KV cache between calls, so "every m tokens" is one call per segment.
``continuation`` says how a partial answer goes on:

- ``"final-message"``: each segment is a call capped at ``m`` output tokens (the wrapped model's
  ``max_tokens_param`` passed per call) on the mutated conversation plus a trailing
  ``AIMessage`` holding the partial answer; the server must continue that message (vLLM's
  ``continue_final_message``, Anthropic's assistant prefill). Every call re-sends, and the
  server re-encodes, the prompt and partial answer: that is the "without cache reuse" cost
  (a server with prefix caching recovers much of it). Replacement copies a top-k row's partial
  text; the replaced row keeps its own mutated instruction (the authors' ``random_replacement``).
- ``"vllm"``: ``"final-message"`` with vLLM's request fields for it (``VLLM_CONTINUE``) added to
  the continuing calls; ``align-chains serve`` accepts the same fields.
- ``"none"`` (default, works with every chat model): each candidate is one whole answer, so the
  only scoring is at the end: the top k still count as the cycle's winners for the archive, but
  nothing is replaced mid-answer. That is the authors' ``mutation_no_replacement`` ablation, not
  DARWIN, and ``response_metadata["strategy"]`` says so: ``"darwin-mutation-no-replacement"``
  (``"darwin"`` only when answers are continued segment by segment; ``"replacements"`` counts
  the mid-answer replacements that ran).

All prompts of a ``batch`` run in lockstep: each phase (first answers and mutation lists, a
cycle's mutation lists, a segment of every live candidate) is one pool of concurrent calls
(``max_concurrency``), and each scoring is one reward call over every prompt.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatResult
from langchain_core.runnables import RunnableConfig

from align_chains.chat_models.rerank.calls import child_config
from align_chains.chat_models.rerank.results import best_index, chat_result, describe, summed_usage
from align_chains.chat_models.rerank.search import Requests, RerankSettings, Search
from align_chains.errors import InvalidInputError, RewardError, SamplingFailedError
from align_chains.models.chat import Conversation, last_user_text
from align_chains.models.messages import to_conversation
from align_chains.strategies.darwin import check_k_at_most_n, copy_plan, evolve_archive, top_k
from align_chains.strategies.darwin_trace import (
    CallFailed,
    CycleEnd,
    MutationFailed,
    Replace,
    Score,
    Seed,
    TraceEvent,
    archive_events,
    finite,
    mutation_events,
    records,
)
from align_chains.strategies.mutation import mutation_request, parse_mutations

DARWIN_N = 5  # the paper's mutations per cycle: n's default under strategy="darwin"
CONTINUATION_MAX_TOKENS = 256
#: the request fields with which vLLM (and ``align-chains serve``) continue a final assistant message
VLLM_CONTINUE: dict[str, Any] = {
    "extra_body": {"continue_final_message": True, "add_generation_prompt": False}
}
#: ``response_metadata["strategy"]`` when candidates are whole answers (nothing replaced mid-answer)
NO_REPLACEMENT = (
    "darwin-mutation-no-replacement"  # default answer cap when answers are continued segment by segment
)
# finish reasons (OpenAI, Anthropic, Gemini, Ollama, vLLM spellings) meaning "cut by the token cap"
_LENGTH_REASONS = frozenset({"length", "max_tokens", "max_output_tokens", "model_length"})
_REASON_KEYS = ("finish_reason", "stop_reason", "done_reason")


@dataclass
class _Row:
    """One candidate: the mutation it answers and its (partial) answer."""

    mutation: int
    text: str = ""
    tokens: int = 0
    finished: bool = False
    finish_reason: str | None = None
    message: AIMessage | None = None  # the last call's message
    reward: float | None = None
    scored_text: str | None = None  # the text ``reward`` belongs to
    failed: bool = False  # a call failed after its retries: dropped from the search


@dataclass
class _Prompt:
    """One prompt's search: archive, candidates, trace, errors and its own work counts."""

    messages: list[BaseMessage]
    conversation: Conversation
    instruction: str
    config: RunnableConfig
    archive: dict[str, float] = field(default_factory=dict)
    candidates: list[tuple[_Row, dict[str, Any]]] = field(default_factory=list)  # (row, meta)
    rows: list[_Row] = field(default_factory=list)  # this cycle's candidates (failed ones flagged)
    trace: list[TraceEvent] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    usage: list[UsageMetadata] = field(default_factory=list)
    calls: int = 0
    answer_calls: int = 0
    mutation_calls: int = 0
    reward_items: int = 0
    cycles_completed: int = 0


class DarwinSearch(Search):
    """``RerankChatModel(strategy="darwin")``: every prompt of a call searched in lockstep."""

    own_settings: ClassVar[tuple[str, ...]] = (
        "m",
        "k",
        "cycles",
        "mutation_max_tokens",
        "continuation",
        "continue_kwargs",
        "seed",
    )
    defaults: ClassVar[dict[str, Any]] = {"n": DARWIN_N}

    @classmethod
    def check_settings(cls, settings: RerankSettings, explicit: set[str]) -> None:
        """k <= n; ``m``/``continue_kwargs`` only with continuation; a cap needs a field to pass it."""
        try:
            check_k_at_most_n(settings.k, settings.n)
        except ValueError as error:
            raise InvalidInputError(str(error)) from None
        misplaced = [key for key in ("m", "continue_kwargs") if key in explicit]
        if settings.continuation == "none" and misplaced:
            raise InvalidInputError(
                f"{', '.join(misplaced)} only apply with continuation='final-message': with "
                "continuation='none' every candidate is one whole answer, so there are no m-token segments "
                "to continue. Remove them, or set continuation='final-message' if the wrapped model "
                "continues a trailing assistant message."
            )
        continued = settings.continuation != "none"
        if settings.continuation == "vllm" and "extra_body" not in type(settings.chat_model).model_fields:
            raise InvalidInputError(
                f"continuation='vllm' sends vLLM's continue_final_message fields in the request body "
                f"(extra_body), but {type(settings.chat_model).__name__} has no extra_body field. Wrap a "
                "ChatOpenAI pointed at the server, or use continuation='final-message' with continue_kwargs "
                "naming how this model continues a final assistant message."
            )
        needs_cap = continued or settings.max_tokens is not None
        field_name = settings.max_tokens_param
        if needs_cap and field_name not in type(settings.chat_model).model_fields:
            why = (
                f"continuation={settings.continuation!r} caps every segment call at m tokens"
                if continued
                else "max_tokens= caps every answer call"
            )
            raise InvalidInputError(
                f"{why}, but {type(settings.chat_model).__name__} has no {field_name!r} field to pass the "
                "cap through. Set max_tokens_param= to the name of its output-token field (e.g. "
                "'num_predict' for ChatOllama, 'max_output_tokens' for Gemini), or use continuation='none' "
                "without max_tokens (whole answers, capped by the wrapped model's own setting)."
            )

    @classmethod
    def identifying_params(cls, settings: RerankSettings) -> dict[str, Any]:
        return {
            "m": settings.m,
            "k": settings.k,
            "cycles": settings.cycles,
            "continuation": settings.continuation,
        }

    def _setup(self, requests: Requests, stop: list[str] | None, kwargs: dict[str, Any]) -> None:
        """The call's state: every conversion before any call."""
        settings = self.settings
        self.stop, self.kwargs = stop, kwargs
        self.continued = settings.continuation in ("final-message", "vllm")
        self.max_tokens = settings.max_tokens or (CONTINUATION_MAX_TOKENS if self.continued else None)
        self.rng = random.Random(settings.seed)
        extra = settings.continue_kwargs
        if settings.continuation == "vllm":
            body = {**VLLM_CONTINUE["extra_body"], **extra.get("extra_body", {})}
            extra = {**extra, "extra_body": body}
        self.continue_kwargs = _merged_over_fields(settings.chat_model, extra)
        self.prompts: list[_Prompt] = []
        for messages, run_manager in requests:
            conversation = to_conversation(messages)
            self.prompts.append(
                _Prompt(
                    messages=list(messages),
                    conversation=conversation,
                    instruction=last_user_text(conversation),
                    config=child_config(run_manager, CallbackManager),
                )
            )
        self.reward_calls = 0

    # -- driver ------------------------------------------------------------------------
    def run(
        self, requests: Requests, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatResult | Exception]:
        """s0 and ``cycles`` cycles for every prompt; per prompt the best answer or the error."""
        self._setup(requests, stop, kwargs)
        begin = time.perf_counter()
        self.reward = self.settings.load_reward()
        try:
            mutation_texts = self._first_answers()
            for cycle in range(1, self.settings.cycles + 1):
                self._cycle(cycle, mutation_texts if cycle == 1 else None)
        except RewardError as exc:  # nothing sampled is lost: every answer rides on the error
            exc.partial = [
                [_plain(row) for row, _ in state.candidates]
                + [_plain(row) for row in state.rows if row.text and not row.failed]
                for state in self.prompts
            ]
            raise
        seconds = time.perf_counter() - begin
        return [self._result(state, seconds) for state in self.prompts]

    # -- calls -------------------------------------------------------------------------
    def _answer_kwargs(self, cap: int | None) -> dict[str, Any]:
        out = {"stop": self.stop, **self.kwargs}
        if cap is not None:
            out[self.settings.max_tokens_param] = cap
        return out

    def _mutation_kwargs(self) -> dict[str, Any]:
        """No stop strings (they must not cut the list); the list cap when the model takes one."""
        out = {key: value for key, value in self.kwargs.items() if key != "stop"}
        if self.settings.max_tokens_param in type(self.settings.chat_model).model_fields:
            out[self.settings.max_tokens_param] = self.settings.mutation_max_tokens
        return out

    def _call(self, jobs: list[tuple[int, str, list[BaseMessage], dict[str, Any]]]) -> list[Any]:
        """Run (prompt, kind, messages, call keywords) jobs in one pool; count calls, usage, errors."""
        outcomes = self.pool.call_many(
            [(messages, self.prompts[p].config, call_kwargs) for p, _, messages, call_kwargs in jobs]
        )
        out = []
        for (p, kind, _, _), (outcome, made) in zip(jobs, outcomes, strict=True):
            state = self.prompts[p]
            state.calls += made
            if kind == "mutation":
                state.mutation_calls += made
            else:
                state.answer_calls += made
            if isinstance(outcome, AIMessage):
                if outcome.usage_metadata:
                    state.usage.append(outcome.usage_metadata)
            else:
                state.errors.append(outcome)
            out.append(outcome)
        return out

    def _mutation_job(self, p: int, parent: str) -> tuple[int, str, list[BaseMessage], dict[str, Any]]:
        request = [_to_message(turn) for turn in mutation_request(parent, self.settings.n)]
        return (p, "mutation", request, self._mutation_kwargs())

    def _score(self, items: Sequence[tuple[int, str]]) -> list[float]:
        """One counted reward call; every text scored against its prompt's ORIGINAL conversation."""
        if not items:
            return []
        scores = self.reward.score([self.prompts[p].conversation for p, _ in items], [t for _, t in items])
        self.reward_calls += 1
        for p, _ in items:
            self.prompts[p].reward_items += 1
        return scores

    # -- s0 ----------------------------------------------------------------------------
    def _first_answers(self) -> list[Any]:
        """s0 for every prompt (one call each, capped at max_tokens) and, in the same pool, cycle
        1's mutation lists (cycle 1's parent can only be x); seeds each archive with r(x, s0)."""
        K = len(self.prompts)
        jobs = [(p, "answer", state.messages, self._answer_kwargs(self.max_tokens)) for p, state in
                enumerate(self.prompts)]  # fmt: skip
        jobs += [self._mutation_job(p, state.instruction) for p, state in enumerate(self.prompts)]
        outcomes = self._call(jobs)
        first = [self._row_after(_Row(mutation=-1), o, self.max_tokens, whole=True) for o in outcomes[:K]]
        ok = [p for p in range(K) if first[p] is not None]
        for p in ok:  # kept before scoring, so a failing reward still hands them back
            meta = {"cycle": 0, "row": 0, "mutation": None, "instruction": self.prompts[p].instruction}
            self.prompts[p].candidates.append((first[p], meta))  # type: ignore[arg-type]
        scores = self._score([(p, first[p].text) for p in ok])  # type: ignore[union-attr]
        for p, state in enumerate(self.prompts):
            row = first[p]
            if row is None:
                # no s0: the instruction enters the archive unscored, so any scored winner beats it
                state.archive[state.instruction] = -math.inf
                state.trace.append(Seed(cycle=0, instruction=state.instruction, reward=None,
                                        failed=describe(outcomes[p])))  # fmt: skip
                continue
            row.reward = row_score = scores[ok.index(p)]
            row.scored_text = row.text
            state.archive[state.instruction] = row_score
            state.trace.append(Seed(cycle=0, instruction=state.instruction, reward=row_score,
                                    tokens=row.tokens, finished=row.finished))  # fmt: skip
        return outcomes[K:]

    # -- one cycle ---------------------------------------------------------------------
    def _cycle(self, cycle: int, mutation_lists: list[Any] | None) -> None:
        """Mutate, answer segment by segment with replacement, update the archive (all prompts)."""
        n, k, K = self.settings.n, self.settings.k, len(self.prompts)
        parents = [self.rng.choice(list(state.archive)) for state in self.prompts]
        for state, parent in zip(self.prompts, parents, strict=True):
            state.trace.extend(archive_events(state.archive, cycle, parent))
        if mutation_lists is None:
            mutation_lists = self._call([self._mutation_job(p, parents[p]) for p in range(K)])
        mutations = []
        for state, parent, outcome in zip(self.prompts, parents, mutation_lists, strict=True):
            if not isinstance(outcome, AIMessage):  # failed after its retries: the parent stands in
                state.trace.append(
                    MutationFailed(cycle=cycle, parent_instruction=parent, error=describe(outcome))
                )
            text = outcome.text if isinstance(outcome, AIMessage) else ""
            parsed = parse_mutations(text, n, parent)
            mutations.append(parsed.instructions)
            state.trace.extend(mutation_events(cycle, parent, parsed))
            state.rows = [_Row(mutation=i) for i in range(n)]
        prompts_for = [
            [_with_instruction(state.messages, instruction) for instruction in mutations[p]]
            for p, state in enumerate(self.prompts)
        ]
        wins = [Counter[int]() for _ in range(K)]
        segment = 0
        while any(not (row.finished or row.failed) for state in self.prompts for row in state.rows):
            segment += 1
            # a prompt all of whose candidates had ended sits the segment out: no calls, and its
            # top k are not counted again (as if it were searched alone)
            going = [any(not (row.finished or row.failed) for row in state.rows) for state in self.prompts]
            self._segment(prompts_for, cycle, segment)
            stale = [(p, r) for p, state in enumerate(self.prompts) for r, row in enumerate(state.rows)
                     if not row.failed and row.scored_text != row.text]  # fmt: skip
            scores = self._score([(p, self.prompts[p].rows[r].text) for p, r in stale])
            for (p, r), score in zip(stale, scores, strict=True):
                row = self.prompts[p].rows[r]
                row.reward, row.scored_text = score, row.text
            for p, state in enumerate(self.prompts):
                if going[p]:
                    last = all(row.finished or row.failed for row in state.rows)
                    self._select(state, cycle, segment, k, wins[p], replace_rows=not last)
        for p, state in enumerate(self.prompts):
            self._end_cycle(state, cycle, parents[p], mutations[p], wins[p])

    def _segment(self, prompts_for: list[list[list[BaseMessage]]], cycle: int, segment: int) -> None:
        """One call for every unfinished row: the next m tokens (continuation) or the whole answer.
        A row whose call fails after its retries is dropped; the others go on."""
        jobs, where = [], []
        for p, state in enumerate(self.prompts):
            for r, row in enumerate(state.rows):
                if row.finished or row.failed:
                    continue
                messages = prompts_for[p][row.mutation]
                cap = self.max_tokens
                if self.continued:
                    assert self.max_tokens is not None
                    cap = min(self.settings.m, self.max_tokens - row.tokens)
                call_kwargs = self._answer_kwargs(cap)
                if self.continued and row.text:
                    messages = [*messages, AIMessage(content=row.text)]
                    call_kwargs.update(self.continue_kwargs)
                jobs.append((p, "answer", messages, call_kwargs))
                where.append((p, r, cap))
        outcomes = self._call(jobs)
        for (p, r, cap), outcome in zip(where, outcomes, strict=True):
            state = self.prompts[p]
            row = self._row_after(state.rows[r], outcome, cap, whole=not self.continued)
            if row is None:
                state.rows[r].failed = True
                state.trace.append(
                    CallFailed(cycle=cycle, segment=segment, row=r, mutation=state.rows[r].mutation,
                               error=describe(outcome))
                )  # fmt: skip
            else:
                state.rows[r] = row

    def _row_after(self, row: _Row, outcome: Any, cap: int | None, whole: bool) -> _Row | None:
        """The row extended by a call's answer (None when the call failed)."""
        if not isinstance(outcome, AIMessage):
            return None
        piece = outcome.text
        reported = (outcome.usage_metadata or {}).get("output_tokens")
        # no usage reported: count the cap as spent, so a continued answer still ends within max_tokens
        spent = reported if reported is not None else (cap if cap is not None else 0)
        reason = next((outcome.response_metadata[key] for key in _REASON_KEYS
                       if outcome.response_metadata.get(key)), None)  # fmt: skip
        reason = str(reason) if reason is not None else None
        tokens = row.tokens + int(spent)
        if reason is not None:
            natural = reason.lower() not in _LENGTH_REASONS
        else:  # no reason given: an empty piece, or fewer tokens than the cap, means it ended itself
            natural = not piece or (reported is not None and cap is not None and reported < cap)
            reason = None if whole else ("stop" if natural else "length")
        capped = self.max_tokens is not None and tokens >= self.max_tokens
        return replace(
            row,
            text=row.text + piece,
            tokens=tokens,
            finished=whole or natural or capped,
            finish_reason=reason,
            message=outcome,
        )

    def _select(
        self, state: _Prompt, cycle: int, segment: int, k: int, wins: Counter[int], replace_rows: bool
    ) -> None:
        """Top k by reward (wins credited to each row's own mutation); unless this was the last
        scoring, every unfinished row outside it takes the partial answer of a random top-k row and
        keeps its own mutated instruction."""
        rows = state.rows
        group = [r for r, row in enumerate(rows) if not row.failed]
        top = top_k(group, [row.reward for row in rows], k)
        wins.update(rows[r].mutation for r in top)
        state.trace.extend(
            Score(cycle=cycle, segment=segment, row=r, mutation=row.mutation, reward=row.reward,
                  tokens=row.tokens, finished=row.finished, top_k=r in top)
            for r, row in enumerate(rows) if not row.failed
        )  # fmt: skip
        if not replace_rows:
            return
        copies = copy_plan(group, top, [row.finished for row in rows], self.rng)
        for r, source in copies:
            state.trace.append(
                Replace(cycle=cycle, segment=segment, row=r, source=source, reward=rows[r].reward,
                        source_reward=rows[source].reward, mutation=rows[r].mutation,
                        source_mutation=rows[source].mutation)
            )  # fmt: skip
        originals = list(rows)
        for r, source in copies:
            rows[r] = replace(originals[source], mutation=originals[r].mutation)

    def _end_cycle(
        self, state: _Prompt, cycle: int, parent: str, mutations: list[str], wins: Counter[int]
    ) -> None:
        alive = [(r, row) for r, row in enumerate(state.rows) if not row.failed]
        state.candidates.extend(
            (
                row,
                {"cycle": cycle, "row": r, "mutation": row.mutation, "instruction": mutations[row.mutation]},
            )
            for r, row in alive
        )
        if alive:  # a cycle every candidate of which failed adds nothing to the archive
            final = [(row.mutation, row.reward) for _, row in alive]
            state.trace.extend(evolve_archive(state.archive, cycle, parent, mutations, wins, final))
            state.cycles_completed = cycle
        best = _best(state)
        state.trace.append(
            CycleEnd(cycle=cycle,
                     reward=max((row.reward for _, row in alive if row.reward is not None), default=None),
                     best_reward=None if best is None else state.candidates[best][0].reward)
        )  # fmt: skip
        state.rows = []

    # -- results -----------------------------------------------------------------------
    def _result(self, state: _Prompt, seconds: float) -> ChatResult | Exception:
        best = _best(state)
        if best is None:
            return SamplingFailedError(
                f"DARWIN over {type(self.settings.chat_model).__name__}: every answer call failed "
                f"({state.calls} calls, {self.settings.retry_attempts} tries each on transient errors), "
                f"so no candidate was scored; first error: {describe(state.errors[0])}",
                state.errors,
            )
        row, _ = state.candidates[best]
        assert row.message is not None
        metadata: dict[str, Any] = {
            **row.message.response_metadata,
            "strategy": "darwin" if self.continued else NO_REPLACEMENT,
            "continuation": self.settings.continuation,
            "replacements": sum(isinstance(event, Replace) for event in state.trace),
            "reward": row.reward,
            "finish_reason": row.finish_reason,
            "candidates": [
                {
                    "text": c.text,
                    "reward": c.reward,
                    "tokens": c.tokens,
                    "finish_reason": c.finish_reason,
                    **meta,
                }
                for c, meta in state.candidates
            ],
            "archive": [{"instruction": t, "reward": finite(v)} for t, v in state.archive.items()],
            "cycles_completed": state.cycles_completed,
            "trace": records(state.trace),
            "compute": {
                "candidates": len(state.candidates),
                "calls": state.calls,
                "answer_calls": state.answer_calls,
                "mutation_calls": state.mutation_calls,
                "failures": len(state.errors),
                "reward_calls": self.reward_calls,
                "reward_items": state.reward_items,
                "seconds": seconds,
            },
        }
        if state.errors:
            metadata["failed_calls"] = len(state.errors)
            metadata["call_errors"] = [describe(e) for e in state.errors]
        usage = summed_usage(state.usage)
        return chat_result(
            row.message, {"content": row.text, "response_metadata": metadata, "usage_metadata": usage}
        )


def _best(state: _Prompt) -> int | None:
    """Index of the best scored candidate (ties: earliest), or None."""
    return best_index([row.reward for row, _ in state.candidates])


def _merged_over_fields(chat_model: BaseChatModel, extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` with each mapping value laid over the wrapped model's same-named mapping field, so
    ``extra_body={"continue_final_message": True}`` keeps the model's own ``extra_body`` entries."""
    out = dict(extra)
    for key, value in extra.items():
        own = getattr(chat_model, key, None) if key in type(chat_model).model_fields else None
        if isinstance(value, Mapping) and isinstance(own, Mapping):
            out[key] = {**own, **value}
    return out


def _with_instruction(messages: Sequence[BaseMessage], instruction: str) -> list[BaseMessage]:
    """The conversation with its last user turn replaced by ``instruction`` (everything else kept)."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        message = out[i]
        if isinstance(message, HumanMessage) or (isinstance(message, ChatMessage) and message.role == "user"):
            out[i] = HumanMessage(content=instruction)
            return out
    return [*out, HumanMessage(content=instruction)]


def _to_message(turn: dict[str, Any]) -> BaseMessage:
    if turn["role"] == "assistant":
        return AIMessage(content=turn["content"])
    return HumanMessage(content=turn["content"])


def _plain(row: _Row) -> AIMessage:
    return AIMessage(content=row.text)
