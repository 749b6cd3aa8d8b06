"""Plain Python functions as rewards: verifiers, rules, heuristics."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation, last_user_text
from align_chains.rewards.base import RewardModel


def retrying(retries: int, retry: Any) -> Retrying:
    """Tenacity's loop for a reward call: ``retries`` more attempts with exponential back-off
    (0.2 s doubling, at most 5 s), re-raising the last error."""
    return Retrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=0.2, max=5),
        retry=retry,
        reraise=True,
    )


class CallableReward(RewardModel):
    """Wrap ``fn(prompt: str, response: str) -> float`` (or a batched version) as a reward.

    The prompt passed to ``fn`` is the last user message. With ``batched=True``, ``fn`` gets
    two lists and returns a list. ``retries`` re-calls a flaky function (a remote verifier,
    say) with exponential back-off before giving up.

    Args:
        fn: ``fn(prompt, response) -> float``, or ``fn(prompts, responses) -> list[float]``
            with ``batched=True``. Checked to be callable with two arguments at once.
        batched: Call ``fn`` once per batch with two lists instead of once per item.
        name: How the reward is named in metadata and errors (default: the function's name).
        retries: Extra attempts, with exponential back-off, when ``fn`` raises (default 0).

    Examples:
        >>> from align_chains import CallableReward
        >>> words = CallableReward(lambda prompt, response: len(response.split()), name="words")
        >>> words.score(["Hi"], ["Hello there"])
        [2.0]
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        batched: bool = False,
        name: str | None = None,
        retries: int = 0,
    ) -> None:
        if not callable(fn):
            raise InvalidInputError(f"CallableReward needs a callable; got {type(fn).__name__}.")
        if retries < 0:
            raise InvalidInputError(f"retries must be >= 0; got {retries}.")
        try:
            inspect.signature(fn).bind(None, None)
        except TypeError as exc:
            raise InvalidInputError(
                f"Reward function {getattr(fn, '__name__', fn)!r} must be callable as "
                f"fn(prompt, response) (or fn(prompts, responses) when batched): {exc}."
            ) from None
        except ValueError:  # builtins without a signature: trust the caller
            pass
        self.fn = fn
        self.batched = batched
        self.retries = retries
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def _score(self, prompts: list[Conversation], responses: list[str]) -> Sequence[float]:
        texts = [last_user_text(p) for p in prompts]
        for attempt in retrying(self.retries, retry_if_exception_type(Exception)):
            with attempt:
                if self.batched:
                    return self.fn(texts, responses)
                return [self.fn(p, r) for p, r in zip(texts, responses, strict=True)]
        raise AssertionError("unreachable")  # pragma: no cover
