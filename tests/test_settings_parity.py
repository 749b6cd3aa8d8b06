"""The strategy owns its settings: every chat model exposes each strategy field as the strategy
declares it, except the deliberate differences listed (with reasons) in DELIBERATE_DIFFERENCES."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from align_chains.chat_models import CHAT_MODELS, DELIBERATE_DIFFERENCES, chat_model_class
from align_chains.chat_models.base import AlignedChatModel
from align_chains.errors import UnknownStrategyError
from align_chains.strategies import SEA, STRATEGIES, Darwin


def exposed_strategies() -> list[tuple[str, type]]:
    """(chat model name, strategy class) for every strategy a registered chat model exposes."""
    return [(name, strategy) for name, cls in CHAT_MODELS.items() for strategy in cls.settings_from]


@pytest.mark.parametrize(
    ("chat_model", "strategy"), exposed_strategies(), ids=lambda x: getattr(x, "__name__", x)
)
def test_every_strategy_field_is_exposed_with_the_strategys_default(chat_model, strategy):
    cls = CHAT_MODELS[chat_model]
    differences = DELIBERATE_DIFFERENCES.get(strategy.name, {})
    for name, info in strategy.model_fields.items():
        assert name in cls.strategy_field_names(), (
            f"{cls.__name__} does not expose {strategy.__name__}.{name}"
        )
        ours = cls.model_fields[name]
        if name in differences and differences[name].changes_default:
            assert ours.default == differences[name].default
        else:
            assert ours.default == info.default, f"{cls.__name__}.{name} default differs from the strategy's"
            assert ours.annotation == info.annotation
        assert repr(ours.metadata) == repr(info.metadata), (
            f"{cls.__name__}.{name} constraints differ from the strategy's"
        )


def test_every_difference_has_a_reason_and_names_a_real_field():
    for strategy_name, differences in DELIBERATE_DIFFERENCES.items():
        fields = STRATEGIES[strategy_name].model_fields
        for name, difference in differences.items():
            assert name in fields and difference.reason.strip()


def test_every_registered_strategy_has_its_settings_on_some_chat_model():
    covered = {strategy.name for _, strategy in exposed_strategies()}
    assert covered == set(STRATEGIES)


def test_sea_noise_schedule_and_reward_weight_are_settable_from_the_chat_model():
    from align_chains.chat_models import SEAChatModel

    model = SEAChatModel(noise=(0.2, 0.02), reward_weight=2.5)
    strategy = model.build_strategy()
    assert isinstance(strategy, SEA)
    assert strategy.noise == (0.2, 0.02) and strategy.reward_weight == 2.5
    assert model.build_strategy(reward_weight=0.5).reward_weight == 0.5  # per call
    assert SEAChatModel().build_strategy().noise == SEA().noise
    with pytest.raises(ValidationError, match="noise levels must be finite and >= 0"):
        SEAChatModel(noise=(0.1, -1.0))
    with pytest.raises(ValidationError, match="greater than 0"):
        SEAChatModel(reward_weight=0)


def test_cross_setting_rules_fail_at_construction_with_the_strategys_message():
    with pytest.raises(ValidationError) as strategy_error:
        Darwin(n=2, k=3)
    with pytest.raises(ValidationError) as chat_error:
        chat_model_class("darwin")(n=2, k=3)
    message = strategy_error.value.errors()[0]["ctx"]["error"]
    assert str(message) in str(chat_error.value)


def test_strategy_field_names_is_public():
    assert chat_model_class("darwin").strategy_field_names()[:3] == ["n", "m", "k"]
    assert "policy" not in AlignedChatModel.strategy_field_names()


def test_a_batch_only_strategy_has_no_chat_model():
    assert "adaptive-best-of-n" in STRATEGIES and "adaptive-best-of-n" not in CHAT_MODELS
    with pytest.raises(UnknownStrategyError, match="allocation='adaptive'"):
        chat_model_class("adaptive")


def test_the_wrapped_model_darwin_takes_darwins_own_settings():
    """RerankChatModel(strategy="darwin") runs the same search as Darwin, so its DARWIN settings are
    Darwin's fields: same default, type and constraints; the ones it cannot offer say why."""
    from langchain_core.language_models import FakeListChatModel

    from align_chains import RerankChatModel
    from align_chains.chat_models.rerank.darwin import (
        NOT_OVER_API,
        SHARED_SETTINGS,
        DarwinSearch,
        darwin_settings,
    )

    fields = RerankChatModel.model_fields
    assert set(SHARED_SETTINGS) | set(NOT_OVER_API) == set(Darwin.model_fields)
    assert not set(SHARED_SETTINGS) & set(NOT_OVER_API)
    for name in SHARED_SETTINGS:
        info, ours = Darwin.model_fields[name], fields[name]
        default = DarwinSearch.defaults.get(name, ours.default)  # n is shared with Best-of-N
        assert default == info.default, f"RerankChatModel's DARWIN default of {name} differs from Darwin's"
        assert ours.annotation == info.annotation
        assert repr(ours.metadata) == repr(info.metadata), f"RerankChatModel.{name} constraints differ"
    for name, reason in NOT_OVER_API.items():
        assert name not in fields and reason.strip()
    model = RerankChatModel(chat_model=FakeListChatModel(responses=["a"]), strategy="darwin")
    assert darwin_settings(model) == Darwin()
    assert darwin_settings(model.model_copy(update={"m": 7, "cycles": 1})) == Darwin(m=7, cycles=1)
