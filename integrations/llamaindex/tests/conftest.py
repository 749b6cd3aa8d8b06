"""Fixtures: a tiny random policy and a length reward, shared by the LlamaIndex tests."""

from __future__ import annotations

import pytest

from align_chains.rewards import CallableReward
from align_chains.testing import tiny_policy


@pytest.fixture(scope="session")
def llamaindex_policy():
    return tiny_policy(name="tiny-llama")


@pytest.fixture(scope="session")
def length_reward_fn():
    return CallableReward(lambda prompt, response: float(len(response)), name="length")
