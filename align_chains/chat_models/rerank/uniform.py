"""Best-of-N over a wrapped chat model: n samples per prompt, all scored in one reward call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables.config import run_in_executor

from align_chains.chat_models.batching import Requests
from align_chains.chat_models.rerank.calls import Outcome, child_config
from align_chains.chat_models.rerank.results import all_failed, chat_result, describe, successes, summed_usage
from align_chains.chat_models.rerank.search import Search
from align_chains.errors import RewardError
from align_chains.models.chat import Conversation
from align_chains.models.messages import to_conversation
from align_chains.rewards import RewardModel
from align_chains.strategies.candidates import best_index


@dataclass
class Samples:
    """One prompt's samples so far: every outcome, the calls made, the scored answers."""

    outcomes: list[Outcome] = field(default_factory=list)
    calls: int = 0
    answers: list[AIMessage] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # strategy-specific metadata


class UniformSearch(Search):
    """Best-of-N: ``n`` samples per prompt (a batch's in one pool), one reward call over all of them."""

    def first_round(self, num_prompts: int) -> int:
        """Samples per prompt before any scoring."""
        return self.settings.n

    def async_samples(self) -> int:
        """Samples of a single prompt sampled with ``ainvoke``."""
        return self.settings.n

    def more(self, samples: list[Samples]) -> list[int]:
        """Samples each prompt gets after the first round is scored (uniform: none)."""
        return [0] * len(samples)

    # -- sync: every prompt of a batch in the same pools and reward calls --------------------
    def run(
        self, requests: Requests, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatResult | Exception]:
        """Sample, score once per round, choose; per prompt its result or ``SamplingFailedError``."""
        begin = time.perf_counter()
        conversations = [to_conversation(messages) for messages, _ in requests]  # before any call
        reward = self.settings.load_reward()
        call_kwargs = self.answer_kwargs(stop, kwargs)
        configs = [child_config(run_manager, CallbackManager) for _, run_manager in requests]
        samples = [Samples() for _ in requests]
        reward_calls = self._round(requests, configs, call_kwargs, conversations, reward, samples,
                                   [self.first_round(len(requests))] * len(requests))  # fmt: skip
        counts = self.more(samples)
        if sum(counts):
            reward_calls += self._round(
                requests, configs, call_kwargs, conversations, reward, samples, counts
            )
        return [
            self.result(state, begin, reward_calls) if successes(state.outcomes) else self._all_failed(state)
            for state in samples
        ]

    def _round(
        self,
        requests: Requests,
        configs: list[Any],
        call_kwargs: dict[str, Any],
        conversations: list[Conversation],
        reward: RewardModel,
        samples: list[Samples],
        counts: Sequence[int],
    ) -> int:
        """``counts[r]`` calls for prompt r, all in one pool, then one reward call over the new
        answers; returns the reward calls made (0 when every call failed)."""
        jobs = [r for r in range(len(requests)) for _ in range(counts[r])]
        outcomes = self.pool.call_many([(requests[r][0], configs[r], call_kwargs) for r in jobs])
        new: list[list[AIMessage]] = [[] for _ in requests]
        for r, (outcome, made) in zip(jobs, outcomes, strict=True):
            samples[r].outcomes.append(outcome)
            samples[r].calls += made
            if isinstance(outcome, AIMessage):
                new[r].append(outcome)
        flat = [(r, m) for r in range(len(requests)) for m in new[r]]
        if not flat:
            return 0
        try:
            scores = reward.score([conversations[r] for r, _ in flat], [m.text for _, m in flat])
        except RewardError as exc:
            exc.partial = [s.answers + got for s, got in zip(samples, new, strict=True)]  # samples not lost
            raise
        for (r, m), score in zip(flat, scores, strict=True):
            samples[r].answers.append(m)
            samples[r].scores.append(score)
        return 1

    # -- async: one prompt, its samples as asyncio tasks ------------------------------------
    async def arun(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> ChatResult:
        """``async_samples()`` concurrent ``ainvoke`` calls, each retried, then one reward call."""
        start = time.perf_counter()
        conversation = to_conversation(messages)
        reward = self.settings.load_reward()
        config = child_config(run_manager, AsyncCallbackManager)
        job = (messages, config, self.answer_kwargs(stop, kwargs))
        outcomes = await self.pool.acall_many([job] * self.async_samples())
        state = Samples(outcomes=[o for o, _ in outcomes], calls=sum(made for _, made in outcomes))
        answers = successes(state.outcomes)
        if not answers:
            raise self._all_failed(state)
        state.scores = await run_in_executor(None, _score, reward, conversation, answers)
        state.answers = answers
        return self.result(state, start, reward_calls=1)

    # -- choosing ----------------------------------------------------------------------------
    def _all_failed(self, state: Samples) -> Exception:
        settings = self.settings
        return all_failed(
            state.outcomes, state.calls, type(settings.chat_model).__name__, settings.retry_attempts
        )

    def result(self, state: Samples, start: float, reward_calls: int) -> ChatResult:
        """The best answer with ``strategy``, ``reward``, ``candidates`` and ``compute`` metadata."""
        answers, scores = state.answers, state.scores
        errors = [o for o in state.outcomes if not isinstance(o, AIMessage)]
        best = best_index(scores)
        assert best is not None  # called only with at least one scored answer
        metadata = {
            **answers[best].response_metadata,
            "strategy": self.settings.strategy,
            "reward": scores[best],
            "candidates": [
                {"text": a.text, "reward": s, "finish_reason": a.response_metadata.get("finish_reason")}
                for s, a in zip(scores, answers, strict=True)
            ],
            "compute": {
                "samples": len(state.outcomes),
                "calls": state.calls,
                "failures": len(errors),
                "reward_calls": reward_calls,
                "reward_items": len(answers),
                "seconds": time.perf_counter() - start,
            },
        }
        metadata.update(state.details)
        if errors:
            metadata["failed_samples"] = len(errors)
            metadata["sample_errors"] = [describe(e) for e in errors]
        usage = summed_usage([a.usage_metadata for a in answers])
        return chat_result(answers[best], {"response_metadata": metadata, "usage_metadata": usage})


def _score(reward: RewardModel, conversation: Any, answers: Sequence[AIMessage]) -> list[float]:
    """All successful samples in one batched reward call; on failure the samples ride on the error."""
    try:
        return reward.score([conversation] * len(answers), [a.text for a in answers])
    except RewardError as exc:
        exc.partial = [list(answers)]  # as in batch: one list of samples per prompt
        raise
