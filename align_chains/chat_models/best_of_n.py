"""Best-of-N as a LangChain chat model, uniform or prompt-adaptive across a batch."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from align_chains.chat_models.settings import settings_base
from align_chains.strategies.adaptive_best_of_n import AdaptiveBestOfN
from align_chains.strategies.base import Strategy
from align_chains.strategies.best_of_n import BestOfN


class BestOfNChatModel(settings_base(BestOfN, AdaptiveBestOfN)):  # type: ignore[misc]
    """Samples several answers and returns the one the reward likes best.

    ``allocation="uniform"`` (default) samples ``n`` answers per prompt.
    ``allocation="adaptive"`` spends an average of ``budget`` samples per prompt across the
    prompts of a ``batch()``/``abatch()`` call, giving more to prompts where another sample is
    worth more (Raman et al. 2025); ``invoke()`` on one prompt is uniform Best-of-``budget``.

    >>> from align_chains import BestOfNChatModel
    >>> BestOfNChatModel(n=4).invoke("Give me three tips for better sleep.")  # doctest: +SKIP
    >>> BestOfNChatModel(allocation="adaptive", budget=8).batch(["...", "..."])  # doctest: +SKIP
    """

    allocation: Literal["uniform", "adaptive"] = Field(
        default="uniform", description="How samples are spread over the prompts of a batch."
    )

    @model_validator(mode="after")
    def _budget_needs_adaptive(self) -> BestOfNChatModel:
        if self.budget is not None and self.allocation != "adaptive":
            raise ValueError(
                "budget= only applies to allocation='adaptive'; for uniform Best-of-N set n= instead."
            )
        return self

    def build_strategy(self, **overrides: Any) -> Strategy:
        settings = self._strategy_settings(overrides)
        if settings["allocation"] == "adaptive":
            budget = settings["budget"] if settings["budget"] is not None else settings["n"]
            return AdaptiveBestOfN(
                budget=budget, exploration=settings["exploration"], mc_draws=settings["mc_draws"]
            )
        return BestOfN(n=settings["n"])
