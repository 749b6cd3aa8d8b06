"""ARGS (reward-guided token search) as a LangChain chat model."""

from __future__ import annotations

from align_chains.chat_models.settings import settings_base
from align_chains.strategies.reward_guided import RewardGuided


class RewardGuidedChatModel(settings_base(RewardGuided)):  # type: ignore[misc]
    """Picks every token by ``log pi + w * reward`` among the policy's top ``k`` (ARGS).

    A classifier reward that shares the policy's vocabulary (or an ``ImplicitReward``) scores
    the k branches incrementally; any other reward (the default MiniLM embedding reward) is
    called on re-tokenised text once per token: correct, slower. Streaming yields every token
    as it is chosen.

    Args:
        k: Top-k policy tokens scored at every step.
        w: Weight of the reward against log pi.
        mode: ``"greedy"`` (default) or ``"sample"``.
        scoring: ``"auto"``, ``"incremental"`` or ``"text"`` (see ``RewardGuided``).
        **settings: The common settings of ``AlignedChatModel``.

    Examples:
        >>> from align_chains import RewardGuidedChatModel
        >>> RewardGuidedChatModel(k=10, w=1.5).invoke("Tips for better sleep?")  # doctest: +SKIP
        >>> RewardGuidedChatModel(k=5, w=2.0, mode="sample").mode
        'sample'
    """
