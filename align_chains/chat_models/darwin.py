"""DARWIN as a LangChain chat model."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from align_chains.chat_models.base import AlignedChatModel
from align_chains.strategies.base import Strategy
from align_chains.strategies.darwin import Darwin


class DarwinChatModel(AlignedChatModel):
    """Answers by evolving rewrites of the user's instruction under reward guidance (DARWIN).

    The defaults are the paper's: ``n=5`` mutations per cycle, replacement every ``m=40``
    tokens keeping the top ``k=3``, ``cycles=3``, temperature 0.7 and top-k 40. That is about
    16 answers' worth of decoding plus three mutation lists; on a CPU try
    ``cycles=1, m=16, max_tokens=64`` first. ``max_total_tokens`` and ``time_budget_s`` cap
    a request: the best answer so far is returned and ``response_metadata["budget_exhausted"]``
    names the cap that ran out.

    >>> from align_chains import DarwinChatModel
    >>> DarwinChatModel(cycles=1, m=16, max_tokens=64).invoke("Tips for better sleep?")  # doctest: +SKIP
    """

    strategy_class: ClassVar[type[Strategy]] = Darwin

    top_k: int = Field(default=40, ge=0, description="Top-k sampling (paper: 40; 0 disables).")

    n: int = Field(default=5, ge=1, description="Mutated instructions (candidates) per cycle.")
    m: int = Field(default=40, ge=1, description="Tokens between two reward-guided replacements.")
    k: int = Field(default=3, ge=1, description="Candidates kept at each replacement (k <= n).")
    cycles: int = Field(default=3, ge=1, description="Mutation cycles after the first answer.")
    mutation_max_tokens: int = Field(
        default=192, ge=16, description="Token cap for the policy's list of rewritten instructions."
    )
    max_total_tokens: int | None = Field(
        default=None, ge=1, description="Cap on tokens generated per request (answers and mutations)."
    )
    time_budget_s: float | None = Field(default=None, gt=0, description="Cap on wall seconds per request.")

    @model_validator(mode="after")
    def _k_at_most_n(self) -> DarwinChatModel:
        if self.k > self.n:
            raise ValueError(
                f"k={self.k} must not exceed n={self.n}: the top k are kept out of n candidates; "
                "lower k or raise n."
            )
        return self
