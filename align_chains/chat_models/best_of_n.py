"""Best-of-N as a LangChain chat model."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from align_chains.chat_models.base import AlignedChatModel
from align_chains.strategies.base import Strategy
from align_chains.strategies.best_of_n import BestOfN


class BestOfNChatModel(AlignedChatModel):
    """Samples ``n`` answers in one batched run and returns the one the reward likes best.

    >>> from align_chains import BestOfNChatModel
    >>> BestOfNChatModel(n=4).invoke("Give me three tips for better sleep.")  # doctest: +SKIP
    """

    strategy_class: ClassVar[type[Strategy]] = BestOfN

    n: int = Field(default=4, ge=1, description="Candidates sampled per prompt.")
