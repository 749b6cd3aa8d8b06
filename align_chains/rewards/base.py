"""The reward interface: batched ``score(prompts, responses) -> list[float]``.

Subclasses implement ``_score``; the public ``score`` validates inputs and outputs once for
every kind of reward, so a misbehaving reward fails loudly with its name in the message.

Every reward is also a LangChain ``Runnable[{"prompt", "response"} -> float]``: ``invoke`` scores
one pair, ``batch`` scores a list of pairs in ONE ``score`` call, so a reward can score or filter
outputs inside any chain. (``Runnable`` defines ``|`` for piping and nothing for ``+``/``*``, so
the weighted-sum operators below keep their meaning.)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor

from align_chains.cancellation import Cancelled, check_cancelled
from align_chains.errors import InvalidInputError, RewardError
from align_chains.models.chat import Conversation, as_conversation
from align_chains.models.messages import to_conversation
from align_chains.rewards.soft import SoftScorer, WeightedSoftScorer

Prompt = str | Sequence[Mapping[str, Any]]

# per response of the ``score`` call in progress: tokens the reward models read (``score_counted``)
_TOKENS_READ: ContextVar[list[int] | None] = ContextVar("align_chains_reward_tokens", default=None)


def count_tokens_read(per_response: Sequence[int], offset: int = 0) -> None:
    """Called by a reward that runs a model over token ids: the tokens it read for responses
    ``offset``, ``offset + 1``, ... of the current call (a no-op unless ``score_counted`` asked)."""
    tally = _TOKENS_READ.get()
    if tally is None:
        return
    for i, n in enumerate(per_response, start=offset):
        if i < len(tally):
            tally[i] += int(n)


class RewardModel(Runnable[Mapping[str, Any], float], ABC):
    """Scores responses to prompts; higher is better.

    A prompt is a string (one user turn) or a chat conversation (list of role/content dicts).
    As a Runnable it takes ``{"prompt": ..., "response": ...}`` and returns a float. Rewards
    add and scale (``0.7 * r1 + 0.3 * r2`` is a ``WeightedReward``). A new kind subclasses
    it and implements ``_score(prompts, responses)``; ``score`` validates inputs, wraps
    failures in ``RewardError`` and rejects wrong counts and non-finite scores.

    Examples:
        >>> from align_chains import RewardModel
        >>> class Length(RewardModel):
        ...     name = "length"
        ...
        ...     def _score(self, prompts, responses):
        ...         return [float(len(r)) for r in responses]
        >>> Length().score(["Hi"], ["Hello"])
        [5.0]
        >>> Length().invoke({"prompt": "Hi", "response": "Hello there"})
        11.0
    """

    name: str = "reward"

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """Score each (prompt, response) pair in one batched call."""
        if isinstance(prompts, str) or isinstance(responses, str):
            raise InvalidInputError(
                "score() takes parallel lists: score([prompt], [response]), not bare strings."
            )
        if len(prompts) != len(responses):
            raise InvalidInputError(
                f"score() got {len(prompts)} prompts and {len(responses)} responses; pass one "
                "prompt per response."
            )
        if not responses:
            return []
        conversations = [as_conversation(p) for p in prompts]
        check_cancelled()  # a reward call is a natural step: stop here if the caller cancelled
        try:
            raw = self._score(conversations, list(responses))
        except (RewardError, InvalidInputError, Cancelled):
            raise
        except Exception as exc:
            raise RewardError(
                f"Reward {self.name!r} raised {type(exc).__name__} while scoring "
                f"{len(responses)} responses: {exc}"
            ) from exc
        return self._check(raw, len(responses))

    def score_counted(
        self, prompts: Sequence[Prompt], responses: Sequence[str]
    ) -> tuple[list[float], list[int]]:
        """``score``, plus the tokens the reward model read for each response (0 for rewards that
        read none: rules, Python functions, embeddings; a weighted sum adds its parts')."""
        tally = [0] * len(responses)
        reset = _TOKENS_READ.set(tally)
        try:
            scores = self.score(prompts, responses)
        finally:
            _TOKENS_READ.reset(reset)
        return scores, tally

    def _check(self, raw: Any, expected: int) -> list[float]:
        if isinstance(raw, str | bytes | Mapping):
            raise RewardError(
                f"Reward {self.name!r} must return a sequence of numbers; got {type(raw).__name__}."
            )
        try:
            scores = [float(s) for s in raw]
        except (TypeError, ValueError) as exc:
            raise RewardError(
                f"Reward {self.name!r} must return a sequence of numbers; got {type(raw).__name__}."
            ) from exc
        if len(scores) != expected:
            raise RewardError(
                f"Reward {self.name!r} returned {len(scores)} scores for {expected} responses; "
                "it must return exactly one score per response."
            )
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise RewardError(
                f"Reward {self.name!r} returned non-finite scores (at positions {bad[:5]}); "
                "return finite floats, e.g. clamp or replace NaN with a low score."
            )
        return scores

    @abstractmethod
    def _score(self, prompts: list[Conversation], responses: list[str]) -> Sequence[float]:
        """Return one score per response."""

    # -- differentiable scoring (SEA) ------------------------------------------------------
    def soft_scorer(self, prompts: Sequence[Prompt], rows: Sequence[int], policy: Any) -> SoftScorer:
        """A differentiable scorer of relaxed responses to ``prompts`` (row i answers ``prompts[rows[i]]``).

        Rewards that can score token distributions override this; the prompts are encoded once.
        """
        raise InvalidInputError(
            f"Reward {self.name!r} ({type(self).__name__}) has no differentiable scoring path, which "
            "SEA needs. Use a reward that has one (a sequence-classification ClassifierReward, a "
            "JudgeReward, or the MiniLM EmbeddingReward), or a strategy that only needs scores: "
            "best-of-n, darwin or reward-guided."
        )

    @property
    def supports_soft_scoring(self) -> bool:
        """True when ``soft_scorer`` is implemented (SEA can use this reward)."""
        return type(self).soft_scorer is not RewardModel.soft_scorer

    # -- LangChain Runnable: {"prompt", "response"} -> float ----------------------------------
    def invoke(self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> float:
        """Score one ``{"prompt": ..., "response": ...}`` pair."""
        return self._call_with_config(lambda pair: self.batch([pair])[0], input, config, run_type="chain")

    def batch(
        self,
        inputs: list[Mapping[str, Any]],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[float]:
        """Score a list of pairs in one batched ``score`` call (one callback run per pair).

        A malformed pair raises ``InvalidInputError`` before anything is scored; with
        ``return_exceptions=True`` it gets its error and the others are still scored.
        """

        def score_all(items: list[Mapping[str, Any]]) -> list[float | Exception]:
            parsed: list[tuple[Prompt, str] | Exception] = []
            for i, item in enumerate(items):
                try:
                    parsed.append(_runnable_pair(self.name, item, i))
                except InvalidInputError as exc:
                    if not return_exceptions:
                        raise
                    parsed.append(exc)
            ok = [i for i, p in enumerate(parsed) if not isinstance(p, Exception)]
            out: list[float | Exception] = [p if isinstance(p, Exception) else 0.0 for p in parsed]
            pairs = [p for p in parsed if not isinstance(p, Exception)]
            if pairs:
                scores = self.score([p[0] for p in pairs], [p[1] for p in pairs])
                for i, s in zip(ok, scores, strict=True):
                    out[i] = s
            return out

        return self._batch_with_config(
            score_all, list(inputs), config, return_exceptions=return_exceptions, run_type="chain"
        )

    async def ainvoke(
        self, input: Mapping[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> float:
        return await run_in_executor(config, self.invoke, input, config)

    async def abatch(
        self,
        inputs: list[Mapping[str, Any]],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[float]:
        """The batched ``batch`` in a worker thread (the default would score pair by pair)."""
        first = config[0] if isinstance(config, list) and config else config
        return await run_in_executor(first, self.batch, inputs, config, return_exceptions=return_exceptions)

    # rewards compose: 0.7 * relevance + 0.3 * verifier
    def __add__(self, other: RewardModel) -> RewardModel:
        return WeightedReward.of(self, 1.0) + WeightedReward.of(other, 1.0)

    def __mul__(self, weight: float) -> RewardModel:
        return WeightedReward.of(self, check_weight(self, weight))

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _runnable_pair(name: str, item: Any, index: int) -> tuple[Prompt, str]:
    """Validate one Runnable input: a dict with a prompt (text, messages) and a response (text)."""
    where = f"Reward {name!r} input {index}"
    if not isinstance(item, Mapping):
        raise InvalidInputError(
            f"{where} is a {type(item).__name__}; pass a dict {{'prompt': ..., 'response': ...}}."
        )
    missing = [k for k in ("prompt", "response") if k not in item]
    if missing:
        raise InvalidInputError(
            f"{where} has no {missing} key(s) (it has {sorted(map(str, item))}); pass "
            "{'prompt': ..., 'response': ...}, e.g. with RunnablePassthrough.assign(response=chat_model)."
        )
    prompt, response = item["prompt"], item["response"]
    if isinstance(prompt, PromptValue):
        prompt = prompt.to_messages()
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, BaseMessage) for m in prompt):
        prompt = to_conversation(prompt)
    if isinstance(response, BaseMessage):
        response = response.text
    if not isinstance(response, str):
        raise InvalidInputError(
            f"{where}: 'response' must be a string or a chat message; got {type(response).__name__}."
        )
    if not isinstance(prompt, str) and not (
        isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt)
    ):
        raise InvalidInputError(
            f"{where}: 'prompt' must be a string, a list of role/content dicts, chat messages or a "
            f"prompt value; got {type(prompt).__name__}."
        )
    return prompt, response


# -- the reward algebra: operators on RewardModel build a WeightedReward ------------------
def check_weight(reward: RewardModel, weight: object) -> float:
    """A weight is a real number (not a bool, not a numeric string)."""
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise InvalidInputError(f"Weight for {reward.name!r} must be a number; got {weight!r}.")
    return float(weight)


class WeightedReward(RewardModel):
    """``sum_i w_i * r_i(x, y)``.

    Build with ``WeightedReward([(r1, 0.7), (r2, 0.3)])`` or ``0.7 * r1 + 0.3 * r2``. Each
    term scores the whole batch in one call.

    Args:
        terms: ``(reward, weight)`` pairs; rewards are ``RewardModel`` instances (wrap plain
            functions with ``CallableReward`` or ``load_reward``), weights real numbers.

    Examples:
        >>> from align_chains import CallableReward, WeightedReward
        >>> words = CallableReward(lambda p, r: len(r.split()), name="words")
        >>> bangs = CallableReward(lambda p, r: r.count("!"), name="bangs")
        >>> mixed = WeightedReward([(words, 1.0), (bangs, -2.0)])  # the same as words + -2.0 * bangs
        >>> mixed.score(["Hi"], ["Hello there!"])
        [0.0]
    """

    def __init__(self, terms: Sequence[tuple[RewardModel, float]]) -> None:
        if not terms:
            raise InvalidInputError("WeightedReward needs at least one (reward, weight) term.")
        for reward, weight in terms:
            if not isinstance(reward, RewardModel):
                raise InvalidInputError(
                    f"WeightedReward terms must be RewardModel instances; got {type(reward).__name__}. "
                    "Wrap plain functions with CallableReward or load_reward()."
                )
            check_weight(reward, weight)
        self.terms = [(reward, float(weight)) for reward, weight in terms]
        self.name = " + ".join(f"{w:g}*{r.name}" for r, w in self.terms)

    @classmethod
    def of(cls, reward: RewardModel, weight: float) -> WeightedReward:
        if isinstance(reward, WeightedReward):
            return cls([(r, w * weight) for r, w in reward.terms])
        return cls([(reward, weight)])

    def __add__(self, other: RewardModel) -> WeightedReward:
        return WeightedReward(self.terms + WeightedReward.of(other, 1.0).terms)

    def _score(self, prompts: list[Conversation], responses: list[str]) -> list[float]:
        total = [0.0] * len(responses)
        for reward, weight in self.terms:
            for i, s in enumerate(reward.score(prompts, responses)):
                total[i] += weight * s
        return total

    def soft_scorer(self, prompts: Sequence[Prompt], rows: Sequence[int], policy: Any) -> SoftScorer:
        missing = [r.name for r, _ in self.terms if not r.supports_soft_scoring]
        if missing:
            raise InvalidInputError(
                f"WeightedReward {self.name!r} has terms with no differentiable path ({missing}), so "
                "SEA cannot use it. Drop those terms for SEA, or use best-of-n, darwin or reward-guided."
            )
        return WeightedSoftScorer([(r.soft_scorer(prompts, rows, policy), w) for r, w in self.terms])

    @property
    def supports_soft_scoring(self) -> bool:
        return all(r.supports_soft_scoring for r, _ in self.terms)
