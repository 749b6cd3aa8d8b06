"""SEA as a LangChain chat model: gradient-based refinement of the answer in logit space."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from align_chains.chat_models.settings import settings_base
from align_chains.strategies.sea import SEA


class SEAChatModel(settings_base(SEA)):  # type: ignore[misc]
    """Refines the policy's own answers by gradient descent on a reward plus the policy's likelihood.

    The reward needs a differentiable path. The default is the policy judging itself
    (``reward="judge"``: log P(yes) - log P(no) that the answer is helpful, accurate and
    harmless), an exact path with no second model; ``reward="minilm"`` goes through the
    sparse vocabulary bridge; a sequence-classification reward model works either way.

    Every ``SEA`` setting is a field here (``noise`` levels, ``reward_weight``, ...). Defaults
    are sized for a CPU demo (2 chains, 20 iterations, 48 tokens, patience 10; see
    ``DELIBERATE_DIFFERENCES``); the published settings are ``chains=4, iterations=200,
    max_tokens=50, patience=100``.

    Args:
        reward: A reward with a soft path: ``"judge"`` (default), ``"judge:<model>"``,
            ``"minilm"``, a sequence-classifier id or directory, or a RewardModel.
        max_tokens: L, response positions optimised.
        temperature: Temperature of the initial samples.
        chains: Chains per prompt, each started from one policy sample.
        iterations: Adam steps per chain.
        lr: Adam learning rate on the logits.
        nll_weight: lambda, weight of the policy's NLL.
        reward_weight: alpha, weight of the reward.
        reward_temperature: tau_r.
        init_temperature: Initial logits are the policy's divided by this.
        decode_top_k: Decode among the policy's top-k tokens.
        patience: Steps without improvement before a chain stops.
        noise: Noise standard deviations over equal parts of the run.
        revise: Let the policy rewrite each chain's best text.
        time_budget_s: Wall-clock cap per request.
        **settings: The common settings of ``AlignedChatModel``.

    Examples:
        >>> from align_chains import SEAChatModel
        >>> SEAChatModel().invoke("Give me three tips for better sleep.")  # doctest: +SKIP
        >>> SEAChatModel(chains=4, iterations=200, max_tokens=50, patience=100).reward
        'judge'
    """

    reward: Any = Field(
        default="judge",
        description="A reward with a soft path: 'judge' (the policy as judge), 'judge:<model>', "
        "'minilm', a sequence-classifier id or directory, or a RewardModel.",
    )
    max_tokens: int = Field(default=48, ge=1, description="L: response positions optimised.")
    temperature: float = Field(default=0.8, ge=0.0, description="Temperature of the initial samples.")
    constrain: bool = Field(
        default=False,
        description="SEA's relaxed optimisation cannot keep to a grammar, so bound tools and schemas "
        "are only asked for, ranked and retried here; True (or grammar=/regex=) raises InvalidInputError.",
    )
