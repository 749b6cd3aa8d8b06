"""Shared fixtures: tiny randomly initialised models with SmolLM2's real tokenizer.

Nothing is downloaded: the tokenizer comes from the embedded package (or its converted
cache), the weights are random and built from a config in this session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from align_chains import testing
from align_chains.models.policy import Policy
from align_chains.testing import tiny_llama_config

__all__ = ["tiny_llama_config"]  # imported by test modules that build their own tiny models

# the reference implementations (``benchmarks/reference``, not part of the package) import as
# ``reference.<module>``, as they do in the benchmark scripts
BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
# the mkdocs hooks (``docs/_hooks``, not a package) import their siblings by name, as mkdocs lets them
DOCS_HOOKS = str(Path(__file__).resolve().parents[1] / "docs" / "_hooks")
for _folder in (BENCHMARKS, DOCS_HOOKS):
    if _folder not in sys.path:
        sys.path.append(_folder)


@pytest.fixture(scope="session")
def smol_tokenizer():
    return testing.smol_tokenizer()


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


@pytest.fixture
def no_eval_loading(monkeypatch):
    """Fail the test if an evaluation loads a policy (bad input must fail before any model)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("align_chains.evaluation.runner.load_policy", refuse)
    monkeypatch.setattr("align_chains.chat_models.base.load_policy", refuse)
