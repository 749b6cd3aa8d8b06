"""Chat-model settings derived from the strategy: the strategy class is their one owner.

A chat model for a strategy exposes every field of the strategy under the same name, type,
constraints and default, copied from the strategy's pydantic ``FieldInfo`` when the chat-model
class is created (``settings_base``). The few deliberate differences (e.g. defaults sized for a
CPU demo) are listed, each with its reason, in ``DELIBERATE_DIFFERENCES``; nothing else may
differ, and ``tests/test_settings_parity.py`` checks it. Rules across settings stay on the
strategy: the chat model builds its strategy when it is constructed (``AlignedChatModel``), so
they fail there with the strategy's own messages.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pydantic import create_model
from pydantic.fields import FieldInfo

from align_chains.chat_models.base import SHARED_WITH_STRATEGIES, AlignedChatModel
from align_chains.strategies.base import Strategy

_SAME: Any = object()  # a Difference that keeps the strategy's default


@dataclass(frozen=True)
class Difference:
    """How a chat model deliberately departs from one strategy field, and why."""

    reason: str
    default: Any = _SAME
    annotation: Any = None  # a new type, when the new default needs one (e.g. ``int | None``)
    description: str | None = None

    @property
    def changes_default(self) -> bool:
        return self.default is not _SAME


# strategy name -> field -> the difference; every entry says why
DELIBERATE_DIFFERENCES: dict[str, dict[str, Difference]] = {
    "sea": {
        "chains": Difference("CPU demo size (published: 4 chains).", default=2),
        "iterations": Difference("CPU demo size (published: 200 Adam steps).", default=20),
        "patience": Difference("Stops a CPU demo early (published: 100, with 200 steps).", default=10),
    },
    "adaptive-best-of-n": {
        "budget": Difference(
            "BestOfNChatModel(allocation='adaptive') spends n samples per prompt unless a budget is given.",
            default=None,
            annotation=int | None,
            description="Adaptive: average samples per prompt (None: n).",
        ),
    },
}


def strategy_fields(*strategy_classes: type[Strategy]) -> dict[str, tuple[Any, FieldInfo]]:
    """``name -> (annotation, FieldInfo)`` for every field of the strategies, differences applied."""
    fields: dict[str, tuple[Any, FieldInfo]] = {}
    for strategy in strategy_classes:
        differences = DELIBERATE_DIFFERENCES.get(strategy.name, {})
        for name, info in strategy.model_fields.items():
            if name in AlignedChatModel.model_fields and name not in SHARED_WITH_STRATEGIES:
                raise TypeError(
                    f"{strategy.__name__}.{name} clashes with the chat model's own setting {name!r}; "
                    "rename the strategy field."
                )
            if name in fields:
                raise TypeError(f"Two strategies of one chat model both define {name!r}.")
            info = copy.deepcopy(info)
            annotation = info.annotation
            difference = differences.get(name)
            if difference is not None:
                if difference.changes_default:
                    info.default = difference.default
                if difference.annotation is not None:
                    annotation = info.annotation = difference.annotation
                if difference.description is not None:
                    info.description = difference.description
            fields[name] = (annotation, info)
    return fields


def strategy_field(strategy: type[Strategy], name: str, *, prefix: str = "", suffix: str = "") -> Any:
    """One strategy field (default, constraints, description; differences applied) for a class that
    declares the field itself, e.g. ``RerankChatModel``'s DARWIN settings: ``m: int =
    strategy_field(Darwin, "m")``. ``prefix``/``suffix`` frame the strategy's description."""
    _, info = strategy_fields(strategy)[name]
    info.description = f"{prefix}{info.description or ''}{suffix}"
    return info


def settings_base(
    *strategy_classes: type[Strategy], name: str | None = None, doc: str | None = None
) -> type[AlignedChatModel]:
    """An ``AlignedChatModel`` subclass whose strategy settings are the strategies' own fields.

    The first strategy is the one ``build_strategy`` builds unless the chat model overrides it.
    Subclass it to add documentation, chat-only settings or a custom ``build_strategy``.
    """
    if not strategy_classes:
        raise TypeError("settings_base() needs at least one Strategy class.")
    base = create_model(  # type: ignore[call-overload]
        name or "".join(s.__name__ for s in strategy_classes) + "Settings",
        __base__=AlignedChatModel,
        __module__=__name__,
        __doc__=doc,
        **strategy_fields(*strategy_classes),
    )
    base.strategy_class = strategy_classes[0]
    base.settings_from = tuple(strategy_classes)
    return base


def chat_model_for(strategy_class: type[Strategy]) -> type[AlignedChatModel]:
    """A chat model class for a strategy with no hand-written one (e.g. a newly registered one)."""
    return settings_base(
        strategy_class,
        name=f"{strategy_class.__name__}ChatModel",
        doc=f"{strategy_class.__name__} as a LangChain chat model.\n\n{strategy_class.__doc__ or ''}",
    )
