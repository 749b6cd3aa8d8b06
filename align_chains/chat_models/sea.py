"""SEA as a LangChain chat model: gradient-based refinement of the answer in logit space."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from align_chains.chat_models.base import AlignedChatModel
from align_chains.strategies.base import Strategy
from align_chains.strategies.sea import SEA


class SEAChatModel(AlignedChatModel):
    """Refines the policy's own answers by gradient descent on a reward plus the policy's likelihood.

    The reward needs a differentiable path. The default is the policy judging itself
    (``reward="judge"``: log P(yes) - log P(no) that the answer is helpful, accurate and
    harmless), an exact path with no second model; ``reward="minilm"`` goes through the
    sparse vocabulary bridge; a sequence-classification reward model works either way.

    Defaults are sized for a CPU demo (2 chains, 20 iterations, 48 tokens); the published
    settings are ``chains=4, iterations=200, max_tokens=50, patience=100``.

    >>> from align_chains import SEAChatModel
    >>> SEAChatModel().invoke("Give me three tips for better sleep.")  # doctest: +SKIP
    """

    strategy_class: ClassVar[type[Strategy]] = SEA

    reward: Any = Field(
        default="judge",
        description="A reward with a soft path: 'judge' (the policy as judge), 'judge:<model>', "
        "'minilm', a sequence-classifier id or directory, or a RewardModel.",
    )
    max_tokens: int = Field(default=48, ge=1, description="L: response positions optimised.")
    temperature: float = Field(default=0.8, ge=0.0, description="Temperature of the initial samples.")
    chains: int = Field(default=2, ge=1, description="Chains, each started from one policy sample.")
    iterations: int = Field(default=20, ge=1, description="Adam steps per chain.")
    lr: float = Field(default=0.1, gt=0.0, description="Adam learning rate on the logits.")
    nll_weight: float = Field(default=0.1, ge=0.0, description="lambda, weight of the policy's NLL.")
    reward_temperature: float = Field(default=0.1, gt=0.0, description="tau_r.")
    init_temperature: float = Field(default=5.0, gt=0.0)
    decode_top_k: int = Field(default=10, ge=1, description="Decode among the policy's top-k.")
    patience: int | None = Field(
        default=10, ge=1, description="Steps without improvement before a chain stops."
    )
    revise: bool = True
    time_budget_s: float | None = Field(default=None, gt=0.0, description="Wall-clock cap per request.")
