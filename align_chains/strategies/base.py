"""The strategy interface: plain Python, no LangChain.

A strategy takes chat prompts, a policy, a reward and sampling settings, and returns one
StrategyResult per prompt: the final text and its reward, every candidate with its reward,
the compute counters, and a trace fit for plotting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.sampling import SamplingParams
from align_chains.errors import InvalidInputError, RewardError
from align_chains.models.chat import Conversation, as_conversation
from align_chains.models.policy import Policy
from align_chains.progress import NullProgress, Progress
from align_chains.rewards.base import Prompt, RewardModel


@dataclass
class Candidate:
    """One response a strategy considered."""

    text: str
    reward: float | None
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Tokens of the answer itself; the EOS that ended it is counted in the compute counters only."""
        return len(self.token_ids)


@dataclass
class StrategyResult:
    """What a strategy returns for one prompt."""

    strategy: str
    text: str
    reward: float | None
    candidates: list[Candidate]
    best_index: int
    prompt_tokens: int
    counters: ComputeCounters
    trace: list[dict[str, Any]] = field(default_factory=list)  # one flat record per event
    flags: dict[str, Any] = field(default_factory=dict)  # e.g. {"budget_exhausted": True}
    details: dict[str, Any] = field(default_factory=dict)  # strategy-specific, e.g. {"samples": 8}

    @property
    def best(self) -> Candidate:
        return self.candidates[self.best_index]

    @property
    def finish_reason(self) -> str:
        return self.best.finish_reason


class Strategy(BaseModel, ABC):
    """Settings plus the algorithm. Settings are validated when the strategy is built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str]

    def run(
        self,
        prompt: Prompt,
        policy: Policy,
        reward: RewardModel,
        params: SamplingParams | None = None,
        *,
        progress: Progress | None = None,
    ) -> StrategyResult:
        """Run on one prompt (a string or a list of role/content messages)."""
        return self.run_batch([prompt], policy, reward, params, progress=progress)[0]

    @abstractmethod
    def run_batch(
        self,
        prompts: Sequence[Prompt],
        policy: Policy,
        reward: RewardModel,
        params: SamplingParams | None = None,
        *,
        progress: Progress | None = None,
    ) -> list[StrategyResult]:
        """Run on several prompts, batching the work across them where the method allows."""


def prepare_prompts(
    prompts: Sequence[Prompt], policy: Policy, params: SamplingParams
) -> tuple[list[Conversation], list[list[int]]]:
    """Validate and render prompts; raises before any model work if one cannot run."""
    if isinstance(prompts, str):
        raise InvalidInputError("run_batch() takes a list of prompts; use run() for one prompt.")
    if not prompts:
        raise InvalidInputError("No prompts given: pass at least one.")
    conversations = [as_conversation(p) for p in prompts]
    token_ids = [policy.render(c) for c in conversations]
    for ids in token_ids:
        policy.check_fits(len(ids), params.max_new_tokens)
    return conversations, token_ids


def score_texts(
    reward: RewardModel,
    conversations: Sequence[Conversation],
    texts: Sequence[str],
    counters: ComputeCounters,
    progress: Progress | None = None,
) -> list[float]:
    """One batched reward call, counted."""
    (progress or NullProgress()).stage("scoring", total=len(texts))
    counters.reward_calls += 1
    counters.reward_items += len(texts)
    scores = reward.score(list(conversations), list(texts))
    (progress or NullProgress()).advance(len(texts))
    return scores


def attach_partial(error: RewardError, partial: Any) -> RewardError:
    """Keep the work done so far on a reward failure, so the caller can still use it."""
    if error.partial is None:
        error.partial = partial
    return error
