"""Exceptions raised by align_chains.

Every error a user can trigger names the problem and the fix. They subclass the builtin
that fits (ValueError for bad input) so generic handlers keep working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class AlignChainsError(Exception):
    """Base class of every align_chains error."""


class InvalidInputError(AlignChainsError, ValueError):
    """The caller passed something we cannot run: raised before any model work."""


class UnknownStrategyError(InvalidInputError):
    """A strategy name that is not registered."""


class ModelLoadError(AlignChainsError, OSError):
    """A policy or reward spec that cannot be resolved to weights on this machine."""


class RewardError(AlignChainsError, RuntimeError):
    """A reward model failed or returned unusable scores.

    ``partial`` carries the work done before the failure (for example the generated
    candidates), so a caller never loses it.

    Args:
        message: What failed, naming the reward.
        partial: The work done before the failure (a strategy's ``StrategyResult`` or
            results, the generated candidates), or None.

    Examples:
        >>> from align_chains import CallableReward, RewardError
        >>> broken = CallableReward(lambda prompt, response: 1 / 0, name="broken")
        >>> try:
        ...     broken.score(["Hi"], ["Hello"])
        ... except RewardError as error:
        ...     print(type(error.__cause__).__name__)
        ZeroDivisionError
    """

    def __init__(self, message: str, *, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class SamplingFailedError(AlignChainsError, RuntimeError):
    """Every call that could answer a prompt failed (over a wrapped chat model, after retries);
    ``errors`` holds each call's last exception."""

    def __init__(self, message: str, errors: Sequence[BaseException]) -> None:
        super().__init__(message)
        self.errors = list(errors)
