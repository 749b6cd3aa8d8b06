"""A fluency guard: keep broken text that games a reward from being chosen.

A search that picks by reward alone returns whatever the reward happens to like, and a small
reward (a 135M judge, say) likes some strings no person would accept. The guard checks a
candidate against two signals that need no second model:

- **per-token NLL under the policy** (plain prompt): a candidate whose mean negative
  log-likelihood is more than ``nll_margin`` nats per token above its reference (the policy's
  own sample it started from) reads as noise to the policy that wrote the reference;
- **repetition**: the share of the candidate's token n-grams that repeat an earlier n-gram of
  the same candidate ("rep-n", Welleck et al. 2019, *Neural text degeneration with
  unlikelihood training*); above ``max_repetition`` the text is looping.

Both read numbers a strategy already has (the decoder's per-token log-probs, the token ids),
so the guard itself costs no forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

GuardReason = Literal["nll", "repetition", "empty"]


def repetition_rate(token_ids: Sequence[int], n: int = 3) -> float:
    """Share of the ``n``-grams of ``token_ids`` that repeat an earlier one (0 = none, near 1 = a loop).

    Sequences shorter than ``n`` have no n-gram and a rate of 0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    grams = [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def mean_nll(logprobs: Sequence[float]) -> float | None:
    """Mean negative log-likelihood per token (nats), or None for an empty answer."""
    if not logprobs:
        return None
    return -math.fsum(logprobs) / len(logprobs)


@dataclass(frozen=True)
class GuardVerdict:
    """What the guard measured on one candidate, and why it excluded it (``reason`` None: admitted)."""

    nll: float | None
    reference_nll: float | None
    repetition: float
    reason: GuardReason | None

    @property
    def admitted(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict[str, float | str | None]:
        return {
            "reason": self.reason,
            "nll": None if self.nll is None else round(self.nll, 4),
            "reference_nll": None if self.reference_nll is None else round(self.reference_nll, 4),
            "repetition": round(self.repetition, 4),
        }


@dataclass(frozen=True)
class FluencyGuard:
    """Admit a candidate unless its NLL is far above its reference's or it repeats itself too much."""

    nll_margin: float
    max_repetition: float
    ngram: int

    def check(
        self, token_ids: Sequence[int], logprobs: Sequence[float], reference_nll: float | None
    ) -> GuardVerdict:
        """The verdict on one candidate; ``logprobs`` are the policy's, under the plain prompt."""
        nll = mean_nll(logprobs)
        repetition = repetition_rate(token_ids, self.ngram)
        reason: GuardReason | None = None
        if not token_ids:
            reason = "empty"
        elif nll is not None and reference_nll is not None and nll > reference_nll + self.nll_margin:
            reason = "nll"
        elif repetition > self.max_repetition:
            reason = "repetition"
        return GuardVerdict(nll, reference_nll, repetition, reason)
