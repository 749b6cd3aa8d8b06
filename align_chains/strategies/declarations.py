"""The small value types a strategy declares its work and its memory with.

A strategy class says, next to its settings (``strategies/base.py``, ``Strategy``):

- ``cost(params) -> Cost``: an upper bound of one prompt's work from its settings (tokens
  decoded, policy forward passes, responses scored, rows decoded side by side) and the settings
  that drive it. A server admits or refuses a request on it, and refuses to serve a strategy
  that declares none (``NoCostModel``);
- ``work_bounds``: the settings that multiply its work, with the largest value a server admits
  by default (``Bound``);
- ``memory(MemoryRequest) -> MemoryPlan``: the phases a request goes through and what each
  holds, from its settings, the policy's shape, the prompt lengths and the reward's footprint
  (by default the engine's decoding phases for ``Cost.rows`` rows per prompt);
- ``follows_grammar`` and ``batch_key()``: whether it keeps a grammar, what two requests must
  share to run as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from align_chains.engine.memory import ModelShape, Phase, decoding_phases, logit_bytes_per_entry
from align_chains.engine.sampling import SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.rewards.footprint import RewardFootprint

#: the request-level name of ``SamplingParams.max_new_tokens`` (chat models and the server call it so)
MAX_TOKENS = "max_tokens"


@dataclass(frozen=True)
class Cost:
    """An upper bound on one prompt's work (rows that stop early only make it cheaper).

    ``factors`` are the settings the cost grows with, most specific first (``"max_tokens"`` for
    ``SamplingParams.max_new_tokens``): what a server names when a request costs too much.
    """

    decode_tokens: int  # tokens sampled across all rows (answers, mutations, SEA's decodes)
    forward_passes: int  # policy forward calls (prefills and decode steps)
    reward_items: int  # responses scored
    rows: int  # rows decoded side by side (KV-cache rows of the policy)
    factors: tuple[str, ...] = (MAX_TOKENS,)


@dataclass(frozen=True)
class Bound:
    """A setting that multiplies a strategy's work and the largest value a server admits for it
    by default (``align-chains serve --limit SETTING=MAX`` changes it)."""

    setting: str
    limit: float


#: bounds on the sampling settings every chat model has
SAMPLING_BOUNDS: tuple[Bound, ...] = (Bound(MAX_TOKENS, 1024), Bound("time_budget_s", 3600))


def default_limits(strategy_classes: Sequence[type]) -> dict[str, float]:
    """Setting -> the largest value a server admits by default, for requests that may run any of
    ``strategy_classes``: the sampling settings' bounds and each class's ``work_bounds`` (the first
    class declaring a setting wins)."""
    limits = {bound.setting: bound.limit for bound in SAMPLING_BOUNDS}
    for cls in strategy_classes:
        for bound in cls.work_bounds:
            limits.setdefault(bound.setting, bound.limit)
    return limits


class NoCostModel(InvalidInputError):
    """A strategy that declares no cost model: a server cannot bound its work, so it refuses it."""


def missing_cost_message(cls: type) -> str:
    """What to add to ``cls`` so that a server can serve it."""
    return (
        f"Strategy {getattr(cls, 'name', cls.__name__)!r} ({cls.__name__}) declares no cost model, so a "
        "server cannot bound a request's work and refuses to serve it. Add a `cost` method to "
        f"{cls.__name__} that returns the work of one prompt from its settings, for example\n\n"
        "    def cost(self, params: SamplingParams) -> Cost:\n"
        "        t = params.max_new_tokens\n"
        "        return Cost(decode_tokens=self.n * t, forward_passes=1 + t, reward_items=self.n,\n"
        '                    rows=self.n, factors=("n", "max_tokens"))\n\n'
        "(Cost is align_chains.strategies.Cost; see 'Adding a strategy' in docs/architecture.md)."
    )


@dataclass(frozen=True)
class MemoryRequest:
    """What a request's memory depends on besides the strategy's settings."""

    shape: ModelShape  # the policy's
    prompt_lengths: tuple[int, ...]  # rendered prompt tokens, one per prompt of the batch
    params: SamplingParams
    reward: RewardFootprint

    @property
    def prompts(self) -> int:
        return len(self.prompt_lengths)

    @property
    def width(self) -> int:
        """The longest prompt: left padding makes every prompt this long."""
        return max(self.prompt_lengths)

    @property
    def new(self) -> int:
        return self.params.max_new_tokens

    @property
    def logit_entry_bytes(self) -> int:
        return logit_bytes_per_entry(self.shape, self.params.top_k, self.params.top_p)

    def decoding(
        self, rows: int, distinct: int, length: int | None = None, new: int | None = None
    ) -> list[Phase]:
        """The engine's phases for ``distinct`` prompts expanded to ``rows`` rows (by default of
        the longest prompt's length, decoding ``max_new_tokens``)."""
        return decoding_phases(
            self.shape,
            self.logit_entry_bytes,
            rows,
            distinct,
            self.width if length is None else length,
            self.new if new is None else new,
        )

    def reward_scoring(self, rows: int) -> int:
        """What one reward call over the decoded rows builds (``RewardFootprint.scoring_bytes``)."""
        return self.reward.scoring_bytes(rows, self.width, self.new)


@dataclass(frozen=True)
class MemoryPlan:
    """A strategy's memory for one request: the rows it decodes side by side, its phases, and
    the largest thing the reward builds while the decoded rows are alive."""

    rows: int
    phases: Sequence[Phase]
    reward_transient: int = 0
    notes: tuple[str, ...] = field(default=())

    def with_reward(self, transient: int) -> MemoryPlan:
        """The plan with a reward cache of the strategy's own, when it is larger than the scoring call."""
        return replace(self, reward_transient=max(self.reward_transient, transient))

    def noted(self, *notes: str) -> MemoryPlan:
        return replace(self, notes=(*self.notes, *notes))
