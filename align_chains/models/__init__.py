"""Loading policies (causal LMs) and the embedded default models."""

from align_chains.models.chat import Conversation, Message, as_conversation
from align_chains.models.embedded import EMBEDDED_POLICY, EMBEDDED_REWARD
from align_chains.models.llama_cpp import LlamaCppPolicy, load_llama_cpp_policy
from align_chains.models.policy import Policy, load_policy

__all__ = [
    "EMBEDDED_POLICY",
    "EMBEDDED_REWARD",
    "Conversation",
    "LlamaCppPolicy",
    "Message",
    "Policy",
    "as_conversation",
    "load_llama_cpp_policy",
    "load_policy",
]
