"""Every registered strategy is servable: settings come from its chat model, looked up by name."""

from __future__ import annotations

import pytest
from align_chains_server.schemas import ChatCompletionRequest
from align_chains_server.service import RequestError, ServedModel

from align_chains.chat_models import CHAT_MODELS
from align_chains.rewards import CallableReward
from align_chains.testing import tiny_policy

HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def loaded():
    return tiny_policy(), CallableReward(lambda prompt, response: float(len(response)), name="length")


@pytest.mark.parametrize("strategy", sorted(CHAT_MODELS))
def test_each_registered_strategy_takes_its_own_settings(strategy, loaded):
    served = ServedModel(strategy=strategy, policy_spec="unused")
    served._policy, served._reward = loaded  # what load() would set, without loading from disk
    cls = CHAT_MODELS[strategy]
    fields = cls.strategy_field_names()
    assert set(fields) <= set(served.strategy_fields())
    name = fields[0]
    default = cls.model_fields[name].default
    planned = served.plan(
        ChatCompletionRequest.model_validate({"messages": HELLO, "align_chains": {name: default}})
    )
    model, conversation = planned.model, planned.conversation
    assert type(model) is cls and getattr(model, name) == default and conversation == HELLO
    with pytest.raises(RequestError) as info:
        served.plan(ChatCompletionRequest.model_validate({"messages": HELLO, "no_such_setting": 1}))
    assert info.value.status == 400 and info.value.param == "no_such_setting"
    assert repr(strategy) in info.value.message
