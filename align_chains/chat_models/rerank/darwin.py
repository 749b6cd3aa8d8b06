"""DARWIN over any LangChain chat model, without cache reuse: ``RerankChatModel(strategy="darwin")``.

The very search of ``Darwin`` (``strategies/darwin_driver.py``, Hung et al., arXiv 2406.15193),
with the wrapped chat model as the policy: s0 seeds the archive; each cycle draws a parent
instruction from the archive, the WRAPPED model rewrites it into ``n`` instructions
(``mutation.py``'s one-shot request and parser), one candidate answers each, and the candidates
are scored against the ORIGINAL conversation; the archive gains the winners that beat their
parent; the best answer of all cycles is returned. Only the backend differs: the calls of
``darwin_calls.py`` instead of KV-cache rows. The DARWIN settings are ``Darwin``'s own fields
(``n``'s default under this strategy included) and its rule ``k <= n`` is checked by building a
``Darwin``; the per-request caps ``max_total_tokens`` and ``time_budget_s`` are not offered here
(``NOT_OVER_API``).

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

import random
import time
from typing import Any, ClassVar

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatResult
from pydantic import ValidationError

from align_chains.chat_models.batching import Requests
from align_chains.chat_models.rerank.darwin_calls import CallAnswer, CallBackend
from align_chains.chat_models.rerank.results import chat_result, describe, summed_usage
from align_chains.chat_models.rerank.search import RerankSettings, Search
from align_chains.errors import InvalidInputError, RewardError, SamplingFailedError
from align_chains.models.chat import last_user_text
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.darwin_driver import DarwinDriver, Kept
from align_chains.strategies.darwin_trace import Replace, finite, records

#: ``response_metadata["strategy"]`` when candidates are whole answers (nothing replaced mid-answer)
NO_REPLACEMENT = "darwin-mutation-no-replacement"
#: ``Darwin``'s settings that a wrapped chat model runs with, each a ``RerankChatModel`` field
#: declared from the strategy's own (``n`` is shared with Best-of-N; DARWIN's default is Darwin's)
SHARED_SETTINGS = ("n", "m", "k", "cycles", "mutation_max_tokens", "mutation_mode")
#: ``Darwin``'s settings not offered over an API, each with the reason
NOT_OVER_API: dict[str, str] = {
    "max_total_tokens": "Over an API the wrapped model's calls are paid per call, and usage is not "
    "always reported, so a token cap could not be kept exactly; cap each answer with max_tokens.",
    "time_budget_s": "The calls of a segment run concurrently and cannot be cut short mid-call; "
    "bound them with the wrapped model's own timeout and retry_attempts.",
}


def darwin_settings(settings: RerankSettings) -> Darwin:
    """The ``Darwin`` strategy these settings run: its own rules (``k <= n``) checked, with its message."""
    try:
        return Darwin(**{name: getattr(settings, name) for name in SHARED_SETTINGS})
    except ValidationError as error:
        raise InvalidInputError(
            "; ".join(str(e.get("ctx", {}).get("error", e["msg"])) for e in error.errors())
        ) from None


class DarwinSearch(Search):
    """``RerankChatModel(strategy="darwin")``: every prompt of a call searched in lockstep."""

    own_settings: ClassVar[tuple[str, ...]] = (
        "m",
        "k",
        "cycles",
        "mutation_max_tokens",
        "mutation_mode",
        "continuation",
        "continue_kwargs",
        "seed",
    )
    defaults: ClassVar[dict[str, Any]] = {"n": Darwin.model_fields["n"].default}

    @classmethod
    def check_settings(cls, settings: RerankSettings, explicit: set[str]) -> None:
        """Darwin's rules (k <= n); ``m``/``continue_kwargs`` only with continuation; a cap needs
        a field of the wrapped model to pass it."""
        darwin_settings(settings)
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

    def run(
        self, requests: Requests, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatResult | Exception]:
        """s0 and ``cycles`` cycles for every prompt; per prompt the best answer or the error."""
        darwin = darwin_settings(self.settings)
        begin = time.perf_counter()
        backend = CallBackend(self.settings, self.pool, requests, (stop, kwargs), darwin.n)
        instructions = [last_user_text(state.conversation) for state in backend.prompts]
        driver = DarwinDriver(darwin, backend, instructions, random.Random(self.settings.seed))
        try:
            driver.run()
        except RewardError as exc:  # nothing sampled is lost: every answer rides on the error
            exc.partial = [
                [_plain(kept) for kept in state.candidates]
                + [_plain(kept) for kept in driver.in_flight(p) if kept.answer.text]
                for p, state in enumerate(driver.prompts)
            ]
            raise
        seconds = time.perf_counter() - begin
        return [self._result(driver, backend, p, seconds) for p in range(len(driver.prompts))]

    def _result(
        self, driver: DarwinDriver, backend: CallBackend, p: int, seconds: float
    ) -> ChatResult | Exception:
        """Prompt p's best answer with how it was found, or the error when no answer was scored."""
        state, calls = driver.prompts[p], backend.prompts[p]
        best = driver.best(p)
        if best is None:
            return SamplingFailedError(
                f"DARWIN over {type(self.settings.chat_model).__name__}: every answer call failed "
                f"({calls.calls} calls, {self.settings.retry_attempts} tries each on transient errors), "
                f"so no candidate was scored; first error: {describe(calls.errors[0])}",
                calls.errors,
            )
        chosen = state.candidates[best]
        answer = chosen.answer
        assert isinstance(answer, CallAnswer) and answer.message is not None
        metadata: dict[str, Any] = {
            **answer.message.response_metadata,
            "strategy": "darwin" if backend.continued else NO_REPLACEMENT,
            "continuation": self.settings.continuation,
            "replacements": sum(isinstance(event, Replace) for event in state.trace),
            "reward": chosen.reward,
            "finish_reason": answer.finish_reason,
            "candidates": [_candidate_record(kept) for kept in state.candidates],
            "archive": [{"instruction": t, "reward": finite(v)} for t, v in state.archive.items()],
            "cycles_completed": state.cycles_completed,
            "mutations_dropped": state.mutations_dropped,
            "trace": records(state.trace),
            "compute": {
                "candidates": len(state.candidates),
                "calls": calls.calls,
                "answer_calls": calls.answer_calls,
                "mutation_calls": calls.mutation_calls,
                "failures": len(calls.errors),
                "reward_calls": backend.reward_calls,
                "reward_items": state.reward_items,
                "seconds": seconds,
            },
        }
        if calls.errors:
            metadata["failed_calls"] = len(calls.errors)
            metadata["call_errors"] = [describe(e) for e in calls.errors]
        update = {
            "content": answer.text,
            "response_metadata": metadata,
            "usage_metadata": summed_usage(calls.usage),
        }
        return chat_result(answer.message, update)


def _candidate_record(kept: Kept) -> dict[str, Any]:
    answer = kept.answer
    assert isinstance(answer, CallAnswer)
    return {"text": answer.text, "reward": kept.reward, "tokens": answer.tokens,
            "finish_reason": answer.finish_reason, **kept.meta}  # fmt: skip


def _plain(kept: Kept) -> AIMessage:
    return AIMessage(content=kept.answer.text)
