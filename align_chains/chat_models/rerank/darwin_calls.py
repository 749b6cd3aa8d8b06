"""DARWIN's API backend: first answers, mutation lists and segments as calls of a wrapped chat model.

The search is ``strategies/darwin_driver.py``'s, the same as on a local policy; this backend
writes its answers through ``calls.CallPool`` (concurrency, tenacity retries). An API keeps no
KV cache between calls, so "every m tokens" is one call per segment: with continuation, each
segment is a call capped at ``m`` output tokens on the mutated conversation plus a trailing
``AIMessage`` holding the partial answer (the server continues it); without, each candidate is
one whole answer. A replacement copies a top-k row's partial text; the row keeps its own mutated
instruction. A call that fails after its retries drops its row (or, for s0 and a mutation list,
stands as ``Failed``). Each step is one pool of concurrent calls over every prompt of the batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from langchain_core.callbacks import CallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.runnables import RunnableConfig

from align_chains.chat_models.batching import Requests
from align_chains.chat_models.rerank.calls import CallPool, child_config
from align_chains.chat_models.rerank.results import describe
from align_chains.chat_models.rerank.search import RerankSettings
from align_chains.models.chat import Conversation
from align_chains.models.messages import to_conversation
from align_chains.strategies.darwin_driver import Answer, Failed
from align_chains.strategies.mutation import mutation_request

CONTINUATION_MAX_TOKENS = 256  # default answer cap when answers are continued segment by segment
#: the request fields with which vLLM (and ``align-chains serve``) continue a final assistant message
VLLM_CONTINUE: dict[str, Any] = {
    "extra_body": {"continue_final_message": True, "add_generation_prompt": False}
}
# finish reasons (OpenAI, Anthropic, Gemini, Ollama, vLLM spellings) meaning "cut by the token cap"
_LENGTH_REASONS = frozenset({"length", "max_tokens", "max_output_tokens", "model_length"})
_REASON_KEYS = ("finish_reason", "stop_reason", "done_reason")


@dataclass(frozen=True)
class CallAnswer:
    """A candidate's answer over an API: its text so far and the last call's message."""

    text: str = ""
    tokens: int = 0
    finished: bool = False
    finish_reason: str | None = None
    message: AIMessage | None = None

    @property
    def key(self) -> Hashable:
        return self.text


@dataclass
class PromptCalls:
    """One prompt's side of the calls: its messages, callbacks, errors, usage and call counts."""

    messages: list[BaseMessage]
    conversation: Conversation
    config: RunnableConfig
    errors: list[BaseException] = field(default_factory=list)
    usage: list[UsageMetadata] = field(default_factory=list)
    calls: int = 0
    answer_calls: int = 0
    mutation_calls: int = 0


#: one call: (prompt, "answer" or "mutation", messages, call keywords)
CallJob = tuple[int, str, list[BaseMessage], dict[str, Any]]


class CallBackend:
    """``DarwinBackend`` over a wrapped chat model (see the module docstring)."""

    def __init__(
        self,
        settings: RerankSettings,
        pool: CallPool,
        requests: Requests,
        call: tuple[list[str] | None, dict[str, Any]],
        n: int,
    ) -> None:
        """``call``: the call's (stop, keywords). Every conversion runs before any call."""
        self.settings, self.pool, self.n = settings, pool, n
        self.stop, self.kwargs = call
        self.continued = settings.continuation in ("final-message", "vllm")
        self.max_tokens = settings.max_tokens or (CONTINUATION_MAX_TOKENS if self.continued else None)
        extra = settings.continue_kwargs
        if settings.continuation == "vllm":
            extra = {**extra, "extra_body": {**VLLM_CONTINUE["extra_body"], **extra.get("extra_body", {})}}
        self.continue_kwargs = _merged_over_fields(settings.chat_model, extra)
        self.prompts = [
            PromptCalls(list(messages), to_conversation(messages), child_config(manager, CallbackManager))
            for messages, manager in requests
        ]
        self.reward = settings.load_reward()
        self.reward_calls = 0
        self.rows: list[CallAnswer | Failed] = []  # the cycle's candidates, n per prompt
        self.row_messages: list[list[BaseMessage]] = []  # each row's mutated conversation

    # -- the backend -------------------------------------------------------------------
    @property
    def exhausted(self) -> bool:
        return False  # every row ends on its own: finished, capped or failed

    def first_answers(
        self, instructions: list[str]
    ) -> tuple[bool, list[Answer | Failed], list[str | Failed] | None]:
        """s0 for every prompt (one call each, capped at max_tokens) and, in the same pool, cycle
        1's mutation lists (cycle 1's parent can only be x)."""
        K = len(self.prompts)
        jobs = [(p, "answer", state.messages, self._answer_kwargs(self.max_tokens))
                for p, state in enumerate(self.prompts)]  # fmt: skip
        jobs += [self._mutation_job(p, instruction) for p, instruction in enumerate(instructions)]
        outcomes = self._call(jobs)
        firsts = [self._after(CallAnswer(), o, self.max_tokens, whole=True) for o in outcomes[:K]]
        return True, firsts, [_listed(o) for o in outcomes[K:]]

    def mutation_lists(self, cycle: int, parents: list[str]) -> tuple[bool, list[str | Failed]]:
        """Each prompt's list in one pool; a call that failed after its retries is ``Failed``."""
        outcomes = self._call([self._mutation_job(p, parent) for p, parent in enumerate(parents)])
        return True, [_listed(o) for o in outcomes]

    def start_candidates(self, cycle: int, parents: list[str], mutations: list[list[str]]) -> None:
        self.rows = [CallAnswer() for _ in range(len(self.prompts) * self.n)]
        self.row_messages = [
            _with_instruction(state.messages, instruction)
            for state, instructions in zip(self.prompts, mutations, strict=True)
            for instruction in instructions
        ]

    def advance(self) -> bool:
        """One call for every unfinished row: the next m tokens (continuation) or the whole answer."""
        jobs, where = [], []
        for r, row in enumerate(self.rows):
            if isinstance(row, Failed) or row.finished:
                continue
            messages, cap = self.row_messages[r], self.max_tokens
            if self.continued:
                assert self.max_tokens is not None
                cap = min(self.settings.m, self.max_tokens - row.tokens)
            call_kwargs = self._answer_kwargs(cap)
            if self.continued and row.text:
                messages = [*messages, AIMessage(content=row.text)]
                call_kwargs.update(self.continue_kwargs)
            jobs.append((r // self.n, "answer", messages, call_kwargs))
            where.append((r, row, cap))
        for (r, row, cap), outcome in zip(where, self._call(jobs), strict=True):
            self.rows[r] = self._after(row, outcome, cap, whole=not self.continued)
        return True

    def answers(self) -> list[Answer | Failed]:
        return list(self.rows)

    def transplant(self, rows: list[int], sources: list[int]) -> None:
        originals = list(self.rows)
        for row, source in zip(rows, sources, strict=True):
            self.rows[row] = originals[source]

    def score(self, owners: list[int], texts: list[str]) -> list[float]:
        scores = self.reward.score([self.prompts[p].conversation for p in owners], texts)
        self.reward_calls += 1
        return scores

    # -- calls -------------------------------------------------------------------------
    def _answer_kwargs(self, cap: int | None) -> dict[str, Any]:
        out = {"stop": self.stop, **self.kwargs}
        if cap is not None:
            out[self.settings.max_tokens_param] = cap
        return out

    def _mutation_job(self, p: int, parent: str) -> CallJob:
        """The rewrite request; no stop strings (they must not cut the list), and the list cap
        when the model takes one."""
        request = [_to_message(turn) for turn in mutation_request(parent, self.n)]
        call_kwargs = {key: value for key, value in self.kwargs.items() if key != "stop"}
        if self.settings.max_tokens_param in type(self.settings.chat_model).model_fields:
            call_kwargs[self.settings.max_tokens_param] = self.settings.mutation_max_tokens
        return (p, "mutation", request, call_kwargs)

    def _call(self, jobs: list[CallJob]) -> list[Any]:
        """Run the jobs in one pool; count calls, usage and errors per prompt."""
        outcomes = self.pool.call_many(
            [(messages, self.prompts[p].config, call_kwargs) for p, _, messages, call_kwargs in jobs]
        )
        for (p, kind, _, _), (outcome, made) in zip(jobs, outcomes, strict=True):
            state = self.prompts[p]
            state.calls += made
            if kind == "mutation":
                state.mutation_calls += made
            else:
                state.answer_calls += made
            if not isinstance(outcome, AIMessage):
                state.errors.append(outcome)
            elif outcome.usage_metadata:
                state.usage.append(outcome.usage_metadata)
        return [outcome for outcome, _ in outcomes]

    def _after(self, row: CallAnswer, outcome: Any, cap: int | None, whole: bool) -> CallAnswer | Failed:
        """The row extended by a call's answer (``Failed`` when the call failed)."""
        if not isinstance(outcome, AIMessage):
            return Failed(describe(outcome))
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
        finished = whole or natural or capped
        return replace(row, text=row.text + piece, tokens=tokens, finished=finished, finish_reason=reason,
                       message=outcome)  # fmt: skip


def _listed(outcome: Any) -> str | Failed:
    """A mutation-list call's text, or ``Failed`` (the parent then stands in for the list)."""
    return outcome.text if isinstance(outcome, AIMessage) else Failed(describe(outcome))


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
