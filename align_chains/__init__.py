"""align_chains: inference-time alignment strategies as LangChain chat models.

from align_chains import SEAChatModel
chain = prompt | SEAChatModel() | parser
"""

from typing import TYPE_CHECKING, Any

from align_chains.chat_models import (
    AlignedChatModel,
    BestOfNChatModel,
    DarwinChatModel,
    RerankChatModel,
    RewardGuidedChatModel,
    SEAChatModel,
    ValueGuidedChatModel,
)
from align_chains.embeddings import MiniLMEmbeddings
from align_chains.engine import ComputeCounters, Decoder, SamplingParams
from align_chains.errors import (
    AlignChainsError,
    InvalidInputError,
    ModelLoadError,
    RewardError,
    UnknownStrategyError,
)
from align_chains.models import EMBEDDED_POLICY, EMBEDDED_REWARD, Policy, load_llama_cpp_policy, load_policy
from align_chains.rewards import (
    CallableReward,
    ClassifierReward,
    EmbeddingReward,
    ImplicitReward,
    JudgeReward,
    RewardModel,
    ServedReward,
    WeightedReward,
    load_reward,
)
from align_chains.strategies import (
    SEA,
    AdaptiveBestOfN,
    BestOfN,
    Darwin,
    RewardGuided,
    Strategy,
    StrategyResult,
    ValueGuided,
    get_strategy,
)

if TYPE_CHECKING:  # imported on first use (below): it needs the optional `langchain` agent runtime
    from align_chains.agent_middleware import ForceToolCallMiddleware

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED_POLICY",
    "EMBEDDED_REWARD",
    "SEA",
    "AdaptiveBestOfN",
    "AlignChainsError",
    "AlignedChatModel",
    "BestOfN",
    "BestOfNChatModel",
    "CallableReward",
    "ClassifierReward",
    "ComputeCounters",
    "Darwin",
    "DarwinChatModel",
    "Decoder",
    "EmbeddingReward",
    "ForceToolCallMiddleware",
    "ImplicitReward",
    "InvalidInputError",
    "JudgeReward",
    "MiniLMEmbeddings",
    "ModelLoadError",
    "Policy",
    "RerankChatModel",
    "RewardError",
    "RewardGuided",
    "RewardGuidedChatModel",
    "RewardModel",
    "SEAChatModel",
    "SamplingParams",
    "ServedReward",
    "Strategy",
    "StrategyResult",
    "UnknownStrategyError",
    "ValueGuided",
    "ValueGuidedChatModel",
    "WeightedReward",
    "get_strategy",
    "load_llama_cpp_policy",
    "load_policy",
    "load_reward",
]


def __getattr__(name: str) -> Any:
    """Names whose modules need optional dependencies, imported on first use."""
    if name == "ForceToolCallMiddleware":
        try:
            from align_chains.agent_middleware import ForceToolCallMiddleware
        except ImportError as error:
            raise ImportError(
                f"align_chains.ForceToolCallMiddleware needs the langchain agent runtime ({error}). "
                "Install it with: pip install 'align-chains[agents]'"
            ) from error
        return ForceToolCallMiddleware
    raise AttributeError(f"module 'align_chains' has no attribute {name!r}")
