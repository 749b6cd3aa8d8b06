"""Best-of-N as a LangChain chat model: uniform, prompt-adaptive across a batch, or with early rejection."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

from pydantic import Field, create_model, model_validator
from pydantic.fields import FieldInfo

from align_chains.chat_models.settings import settings_base, strategy_fields
from align_chains.strategies.adaptive_best_of_n import AdaptiveBestOfN
from align_chains.strategies.base import Strategy
from align_chains.strategies.best_of_n import BestOfN
from align_chains.strategies.early_rejection import EarlyRejectionBestOfN


def _early_rejection_fields() -> dict[str, tuple[Any, FieldInfo]]:
    """EarlyRejectionBestOfN's settings (``n`` is Best-of-N's own); ``rejection`` defaults to 0 here,
    so that BestOfNChatModel stays plain Best-of-N unless early rejection is asked for."""
    fields = {name: spec for name, spec in strategy_fields(EarlyRejectionBestOfN).items() if name != "n"}
    annotation, info = fields["rejection"]
    info = copy.deepcopy(info)
    info.default = 0.0
    info.description = "Early rejection (α): drop this fraction of partial answers at each decision; 0: off."
    fields["rejection"] = (annotation, info)
    return fields


_Settings = create_model(  # type: ignore[call-overload]
    "BestOfNSettings",
    __base__=settings_base(BestOfN, AdaptiveBestOfN),
    __module__=__name__,
    **_early_rejection_fields(),
)


class BestOfNChatModel(_Settings):  # type: ignore[misc,valid-type]
    """Samples several answers and returns the one the reward likes best.

    ``allocation="uniform"`` (default) samples ``n`` answers per prompt.
    ``allocation="adaptive"`` spends an average of ``budget`` samples per prompt across the
    prompts of a ``batch()``/``abatch()`` call, giving more to prompts where another sample is
    worth more (Raman et al. 2025); ``invoke()`` on one prompt is uniform Best-of-``budget``.

    Args:
        n: Candidates per prompt (uniform allocation; default 4).
        allocation: ``"uniform"`` (default) or ``"adaptive"`` (across the prompts of a batch).
        budget: Adaptive: average samples per prompt (default ``n``).
        exploration: Adaptive: fraction of the budget explored first (default 0.75).
        mc_draws: Adaptive: Monte Carlo draws per expected-maximum estimate.
        rejection: Early rejection α (default 0: off); with ``decision_every``, ``memory_tokens``,
            ``partial_scoring``, ``ties`` (see ``EarlyRejectionBestOfN``).
        **settings: The common settings of ``AlignedChatModel`` (``policy``, ``reward``,
            ``max_tokens``, ``temperature``, ``seed``, ...).

    Examples:
        >>> from align_chains import BestOfNChatModel
        >>> BestOfNChatModel(n=4).invoke("Give me three tips for better sleep.")  # doctest: +SKIP
        >>> BestOfNChatModel(allocation="adaptive", budget=8).batch(["...", "..."])  # doctest: +SKIP
        >>> BestOfNChatModel(n=8, reward=lambda prompt, answer: -len(answer)).n
        8

        ``rejection=α`` (with ``decision_every=m``) starts ``n`` answers and, every m tokens, drops
        the fraction α of them whose partial answers the reward scores lowest (early rejection,
        Sun et al. 2024; see docs/early_rejection.md):

        >>> BestOfNChatModel(n=32, rejection=0.75, decision_every=8, reward="judge")  # doctest: +SKIP
    """

    also_builds: ClassVar[tuple[type[Strategy], ...]] = (EarlyRejectionBestOfN,)  # with rejection > 0

    allocation: Literal["uniform", "adaptive"] = Field(
        default="uniform", description="How samples are spread over the prompts of a batch."
    )

    @model_validator(mode="after")
    def _budget_needs_adaptive(self) -> BestOfNChatModel:
        if self.budget is not None and self.allocation != "adaptive":
            raise ValueError(
                "budget= only applies to allocation='adaptive'; for uniform Best-of-N set n= instead."
            )
        if self.rejection and self.allocation != "uniform":
            raise ValueError(
                "rejection= applies to uniform Best-of-N; use allocation='uniform' (the default) with it."
            )
        return self

    def build_strategy(self, **overrides: Any) -> Strategy:
        settings = self._strategy_settings(overrides)
        if settings["allocation"] == "adaptive":
            budget = settings["budget"] if settings["budget"] is not None else settings["n"]
            return AdaptiveBestOfN(
                budget=budget, exploration=settings["exploration"], mc_draws=settings["mc_draws"]
            )
        if settings["rejection"]:
            return EarlyRejectionBestOfN(
                n=settings["n"],
                **{k: settings[k] for k in _early_rejection_fields()},
            )
        return BestOfN(n=settings["n"])
