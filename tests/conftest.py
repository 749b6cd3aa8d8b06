"""Shared fixtures: tiny randomly initialised models with SmolLM2's real tokenizer.

Nothing is downloaded: the tokenizer comes from the embedded package (or its converted
cache), the weights are random and built from a config in this session.
"""

from __future__ import annotations

import pytest
import torch

from align_chains.models.embedded import gguf_path
from align_chains.models.policy import Policy
from align_chains.settings import cache_dir


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    converted = (
        next((cache_dir() / "models").glob("smollm2-135m-instruct-v*/tokenizer.json"), None)
        if (cache_dir() / "models").is_dir()
        else None
    )
    if converted is not None:
        return AutoTokenizer.from_pretrained(str(converted.parent))
    gguf = gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def tiny_llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    values = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    values.update(overrides)
    return LlamaConfig(**values)


@pytest.fixture(scope="session")
def tiny_policy(smol_tokenizer) -> Policy:
    """A 2-layer random Llama on SmolLM2's tokenizer and chat template."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(smol_tokenizer))
    return Policy(model=model, tokenizer=smol_tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_classifier(smol_tokenizer):
    """A random one-label sequence classifier: a stand-in for a Skywork-style reward model."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    return LlamaForSequenceClassification(tiny_llama_config(smol_tokenizer, num_labels=1))


@pytest.fixture
def length_reward():
    """A deterministic reward: longer responses score higher."""
    from align_chains.rewards import CallableReward

    return CallableReward(lambda prompt, response: float(len(response)), name="length")
