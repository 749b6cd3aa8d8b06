"""ARGS (reward-guided token search) as a LangChain chat model."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from align_chains.chat_models.base import AlignedChatModel
from align_chains.strategies.base import Strategy
from align_chains.strategies.reward_guided import RewardGuided


class RewardGuidedChatModel(AlignedChatModel):
    """Picks every token by ``log pi + w * reward`` among the policy's top ``k`` (ARGS).

    A classifier reward that shares the policy's vocabulary (or an ``ImplicitReward``) scores
    the k branches incrementally; any other reward (the default MiniLM embedding reward) is
    called on re-tokenised text once per token: correct, slower. Streaming yields every token
    as it is chosen.

    >>> from align_chains import RewardGuidedChatModel
    >>> RewardGuidedChatModel(k=10, w=1.5).invoke("Give me three tips for better sleep.")  # doctest: +SKIP
    """

    strategy_class: ClassVar[type[Strategy]] = RewardGuided

    k: int = Field(default=10, ge=1, le=1000, description="Top-k policy tokens scored per step.")
    w: float = Field(default=1.5, ge=0.0, allow_inf_nan=False, description="Reward weight against log pi.")
    mode: Literal["greedy", "sample"] = Field(
        default="greedy", description="Choose by argmax or by sampling."
    )
    scoring: Literal["auto", "incremental", "text"] = Field(
        default="auto", description="Branch scoring: incremental when the reward allows, else text."
    )
