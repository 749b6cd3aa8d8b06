"""Per-prompt rewards: each prompt of a run carries its own exact reward, and every strategy can use it.

A ``LineReward`` is one prompt's reward: a task family with its parameters (``TaskLineReward``)
or your Python verifier receiving the line's fields (``FunctionLineReward``). ``RoutedReward``
is an ordinary ``RewardModel`` over many prompts: it finds each conversation's own reward by its
messages, so Best-of-N, DARWIN and the rest score through ``score``; early rejection, ARGS and
IVG's chunk search judge prefixes through the families' prefix rules (``PrefixScoring``); SEA
follows the families' differentiable surrogates (``soft_scorer``).
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from align_chains.engine.counters import ComputeCounters
from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation
from align_chains.models.policy import Policy
from align_chains.rewards.base import Prompt, RewardModel
from align_chains.rewards.prefix import PrefixBranchScorer, PrefixPartialScorer, PrefixScoring
from align_chains.rewards.soft import SoftScorer
from align_chains.rewards.specs import FunctionSpec, parse_reward_spec
from align_chains.tasks.base import Surrogate, TaskFamily
from align_chains.tasks.families import FAMILIES


class LineReward(ABC):
    """One prompt's own reward (see the module docstring)."""

    @abstractmethod
    def score(self, text: str) -> float: ...

    @abstractmethod
    def success(self, text: str) -> bool | None:
        """The task's success test, or None when the reward has none."""

    def prefix(self, text: str, remaining: int) -> float:
        return self.score(text)

    def surrogate(self, tokenizer: Any) -> Surrogate | None:
        return None

    @abstractmethod
    def describe(self) -> dict[str, Any] | str: ...


@dataclass(frozen=True)
class TaskLineReward(LineReward):
    family: TaskFamily
    params: dict[str, Any]

    def score(self, text: str) -> float:
        return self.family.reward(self.params, text)

    def success(self, text: str) -> bool | None:
        return self.family.success(self.params, text)

    def prefix(self, text: str, remaining: int) -> float:
        return self.family.prefix(self.params, text, remaining)

    def surrogate(self, tokenizer: Any) -> Surrogate | None:
        return self.family.surrogate(self.params, tokenizer)

    @property
    def has_surrogate(self) -> bool:
        return type(self.family).surrogate is not TaskFamily.surrogate

    def describe(self) -> dict[str, Any]:
        return {"family": self.family.name, **self.params}


@dataclass(frozen=True)
class FunctionLineReward(LineReward):
    """``fn(response, fields)``: a bool (success, scored 1/0) or a number (``success_at`` sets success)."""

    target: str
    fn: Callable[[str, dict[str, Any]], Any]
    fields: dict[str, Any]

    def _value(self, text: str) -> Any:
        value = self.fn(text, self.fields)
        if not isinstance(value, bool | int | float):
            raise InvalidInputError(
                f"Verifier {self.target!r} returned {type(value).__name__}; return a bool or a number."
            )
        return value

    def score(self, text: str) -> float:
        return float(self._value(text))

    def success(self, text: str) -> bool | None:
        value = self._value(text)
        if isinstance(value, bool):
            return value
        threshold = self.fields.get("success_at")
        return None if threshold is None else float(value) >= float(threshold)

    def describe(self) -> str:
        return self.target


def parse_line_reward(spec: Any, fields: dict[str, Any], where: str) -> LineReward:
    """A prompt line's ``"reward"``: ``{"family": NAME, ...params}`` or ``"python:module:function"``."""
    if isinstance(spec, dict):
        name = spec.get("family")
        if name not in FAMILIES:
            raise InvalidInputError(
                f'{where}: "reward" needs "family", one of {sorted(FAMILIES)} (or a verifier '
                f'"python:module:function"); got {name!r}.'
            )
        family = FAMILIES[name]
        try:
            params = family.check({k: v for k, v in spec.items() if k != "family"})
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}") from None
        return TaskLineReward(family, params)
    if isinstance(spec, str) and spec.strip().lower().startswith("python:"):
        try:
            parsed = parse_reward_spec(spec)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}") from None
        assert isinstance(parsed, FunctionSpec)
        try:
            inspect.signature(parsed.function).bind("", {})
        except TypeError:
            raise InvalidInputError(
                f"{where}: verifier {parsed.target!r} must take (response, fields): the answer and "
                "this line's JSON object."
            ) from None
        except ValueError:
            pass
        return FunctionLineReward(parsed.target, parsed.function, dict(fields))
    raise InvalidInputError(
        f'{where}: "reward" must be {{"family": NAME, ...}} with NAME one of {sorted(FAMILIES)}, or '
        f'"python:module:function" (a verifier fn(response, fields)); got {spec!r}.'
    )


def conversation_key(conversation: Prompt) -> str:
    """How a prompt is recognised: its messages, exactly."""
    if isinstance(conversation, str):
        return json.dumps([["user", conversation]])
    return json.dumps([[str(m["role"]), str(m["content"])] for m in conversation])


class RoutedReward(PrefixScoring, RewardModel):
    """Each conversation's own ``LineReward`` (``fallback`` for any other); see the module docstring."""

    name = "per-prompt"

    def __init__(self, routes: dict[str, LineReward], fallback: RewardModel | None = None) -> None:
        self.routes = routes
        self.fallback = fallback

    def line(self, conversation: Prompt) -> LineReward | None:
        found = self.routes.get(conversation_key(conversation))
        if found is None and self.fallback is None:
            raise InvalidInputError(
                "This prompt has no reward of its own and no fallback reward was given; give its "
                'line a "reward" or pass a global reward.'
            )
        return found

    def _route(self, prompts: Sequence[Prompt], texts: Sequence[str], own: Callable, other: Callable) -> list:
        lines = [self.line(p) for p in prompts]
        rest = [i for i, line in enumerate(lines) if line is None]
        out: list[Any] = [None if line is None else own(line, i) for i, line in enumerate(lines)]
        if rest:
            values = other([prompts[i] for i in rest], [texts[i] for i in rest])
            for i, value in zip(rest, values, strict=True):
                out[i] = value
        return out

    def _score(self, prompts: list[Conversation], responses: list[str]) -> list[float]:
        other = self.fallback.score if self.fallback is not None else None
        return self._route(prompts, responses, lambda line, i: line.score(responses[i]), other)

    def score_prefix(
        self, prompts: Sequence[Conversation], prefixes: Sequence[str], remaining: Sequence[int]
    ) -> list[float]:
        other = self.fallback.score if self.fallback is not None else None
        values = self._route(prompts, prefixes, lambda line, i: line.prefix(prefixes[i], remaining[i]), other)
        return self._check(values, len(prefixes))

    def success(self, prompts: Sequence[Prompt], texts: Sequence[str]) -> list[bool | None]:
        """Each answer's success test (None where the prompt's reward has none)."""
        none = lambda p, t: [None] * len(t)  # noqa: E731 - prompts without a task have no success test
        return self._route(prompts, texts, lambda line, i: line.success(texts[i]), none)

    # -- the hooks the strategies look for ---------------------------------------------------
    def partial_scorer(self, policy: Policy, counters: ComputeCounters) -> PrefixPartialScorer:
        return PrefixPartialScorer(self, policy, counters)

    def branch_scorer(self, policy: Policy, counters: ComputeCounters) -> PrefixBranchScorer:
        return PrefixBranchScorer(self, policy, counters)

    def soft_scorer(self, prompts: Sequence[Prompt], rows: Sequence[int], policy: Any) -> SoftScorer:
        lines = [self.line(p) for p in prompts]
        missing = sorted(
            {str(line.describe() if line else "the fallback reward") for line in lines if not _has_soft(line)}
        )
        if missing:
            raise InvalidInputError(
                f"SEA needs a differentiable reward; these prompts' rewards have none: {missing}. "
                "Run SEA on the families with a surrogate (keywords, avoidance), or use another strategy."
            )
        surrogates = [line.surrogate(policy.tokenizer) for line in lines]  # type: ignore[union-attr]
        return RoutedSoftScorer([surrogates[p] for p in rows])  # type: ignore[misc]

    @property
    def supports_soft_scoring(self) -> bool:
        return self.fallback is None and all(_has_soft(line) for line in self.routes.values())


def _has_soft(line: LineReward | None) -> bool:
    return isinstance(line, TaskLineReward) and line.has_surrogate


class RoutedSoftScorer(SoftScorer):
    """Row ``i``'s surrogate on row ``i``; rows sharing a surrogate are scored in one call."""

    def __init__(self, surrogates: list[Surrogate]) -> None:
        self.groups: dict[int, tuple[Surrogate, list[int]]] = {}
        for row, fn in enumerate(surrogates):
            self.groups.setdefault(id(fn), (fn, []))[1].append(row)

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        parts = []
        for fn, rows in self.groups.values():
            index = torch.as_tensor(rows, device=probs.device)
            parts.append((index, fn(probs[index])))
        out = torch.zeros(probs.shape[0], dtype=torch.float32, device=probs.device)
        for index, values in parts:
            out = out.index_put((index,), values.float())
        return out
