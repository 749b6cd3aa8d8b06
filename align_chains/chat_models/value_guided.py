"""Integrated Value Guidance (IVG) as a LangChain chat model."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from align_chains.chat_models.settings import settings_base
from align_chains.models.policy import Policy
from align_chains.rewards.implicit import ImplicitReward
from align_chains.strategies.value_guided import ValueGuided


class ValueGuidedChatModel(settings_base(ValueGuided)):  # type: ignore[misc]
    """Value-guided decoding: implicit token-level guidance and/or chunk-level beam search.

    The guide is either a ``principle`` (the policy with and without it in its system prompt,
    no second model) or a ``tuned``/``untuned`` pair of LMs sharing the policy's vocabulary.
    With a guide, both signals are on by default (IVG); without one, chunk-level search on the
    ``reward`` runs alone.

    Args:
        w: Token-level guidance weight.
        beams: W, beams kept after every chunk.
        samples: K, samples per beam per chunk.
        chunk_tokens: L, tokens per chunk.
        token_guidance: Token-level guidance on or off (None: on with a guide).
        chunk_value: ``"implicit"``, ``"reward"`` or ``"none"`` (None: implicit with a guide).
        principle: Guide the policy with itself, with and without this principle.
        ties: Chunk decisions tied at the cut: ``"order"`` keeps the first rows, ``"spread"``
            keeps children of parents with fewer rows kept first.
        tuned: Tuned guide LM (e.g. a DPO model), on the policy's vocabulary.
        untuned: Its untuned reference (e.g. the SFT model).
        top_k: Token-level sampling keeps the top k (IVG's setting: 50).
        **settings: The common settings of ``AlignedChatModel``.

    Examples:
        >>> from align_chains import ValueGuidedChatModel
        >>> ValueGuidedChatModel(principle="Answer concisely and politely").invoke("Hi!")  # doctest: +SKIP
        >>> ValueGuidedChatModel(token_guidance=False, chunk_value="reward", reward="minilm").beams
        2
    """

    top_k: int = Field(default=50, ge=0, description="Token-level sampling keeps the top 50 (IVG's setting).")

    # chat-only: loaded guide models, handed to the strategy as ``guide`` (``_run_kwargs``)
    tuned: str | Policy | None = Field(default=None, description="Tuned guide LM (e.g. a DPO model).")
    untuned: str | Policy | None = Field(
        default=None, description="Its untuned reference (e.g. the SFT model)."
    )

    _guide: ImplicitReward | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_guide(self) -> ValueGuidedChatModel:
        if (self.tuned is None) != (self.untuned is None):
            raise ValueError("Pass both tuned= and untuned= (a guide pair), or neither.")
        if self.tuned is not None and self.principle is not None:
            raise ValueError("Pass either principle= or a tuned=/untuned= pair, not both.")
        token_off = self.token_guidance is False
        if token_off and self.chunk_value == "none":
            raise ValueError("token_guidance=False with chunk_value='none' turns off all guidance.")
        if (
            self.tuned is None
            and self.principle is None
            and (self.token_guidance or self.chunk_value == "implicit")
        ):
            raise ValueError(
                "Implicit guidance needs a guide: set principle='...' or tuned=/untuned= models."
            )
        return self

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params = super()._identifying_params
        for name in ("tuned", "untuned"):  # a loaded Policy is named, not dumped
            if isinstance(params.get(name), Policy):
                params[name] = params[name].name
        return params

    def load(self) -> tuple[Any, Any]:
        policy, reward = super().load()
        with self._load_lock:
            if self.tuned is not None and self._guide is None:
                self._guide = ImplicitReward(self.tuned, self.untuned, device=self.device)
        return policy, reward

    def _run_kwargs(self) -> dict[str, Any]:
        return {"guide": self._guide} if self._guide is not None else {}
