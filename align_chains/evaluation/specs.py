"""Strategy specs for ``align-chains eval``: ``NAME[:KEY=V1,V2[:KEY=V...]]`` -> one setting per value.

``best-of-n:n=4,8,16,32`` is four settings; ``sea:chains=2:iterations=4,8`` is two (the grid of
every key's values). A spec is checked by constructing its chat model (cheap: nothing loads),
so an unknown strategy, key or value fails before any model work.

Names are the chat-model strategies (``best-of-n``, ``sea``, ``darwin``, ``reward-guided``/``args``,
``value-guided``/``ivg``) and two Best-of-N variants run through ``BestOfNChatModel``:
``adaptive-best-of-n`` (``n`` is the average budget per prompt, spread over the prompts of a
batch) and ``early-rejection`` (``rejection``, ``decision_every``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from align_chains.chat_models import BestOfNChatModel, chat_model_class
from align_chains.chat_models.base import AlignedChatModel
from align_chains.errors import InvalidInputError
from align_chains.strategies import EarlyRejectionBestOfN, canonical_strategy_name

# settings the harness owns (one policy, reward and sampler for every strategy)
_HARNESS_FIELDS = {"policy", "reward", "device", "dtype", "device_map", "show_progress", "seed", "stop"}


@dataclass(frozen=True)
class Variant:
    """A strategy name the harness runs through another chat model, with fixed settings."""

    chat_model: type[AlignedChatModel]
    fixed: dict[str, Any] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)  # spec key -> chat-model field


VARIANTS: dict[str, Variant] = {
    "adaptive-best-of-n": Variant(BestOfNChatModel, {"allocation": "adaptive"}, {"n": "budget"}),
    # the strategy's own defaults (BestOfNChatModel alone is plain Best-of-N: rejection=0)
    "early-rejection": Variant(
        BestOfNChatModel,
        {k: EarlyRejectionBestOfN.model_fields[k].default for k in ("n", "rejection")},
    ),
}


@dataclass(frozen=True)
class StrategySetting:
    """One point of a curve: a strategy and the settings it runs with."""

    strategy: str  # display name, e.g. "best-of-n"
    settings: dict[str, Any]  # spec values, as the user wrote them
    chat_model: type[AlignedChatModel]
    fields: dict[str, Any]  # chat-model fields (variant's fixed values and renames applied)

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.settings.items())

    @property
    def key(self) -> str:
        """Identifies the setting in the JSON results (resume skips finished keys)."""
        return f"{self.strategy}:{self.label}" if self.settings else self.strategy

    def build(self, **common: Any) -> AlignedChatModel:
        """The chat model for this setting, with the harness's policy, reward and sampling."""
        return self.chat_model(**{**common, **self.fields})


def plain_sample() -> StrategySetting:
    """The baseline every win rate is against: one sample from the policy (Best-of-1)."""
    return StrategySetting("plain", {}, BestOfNChatModel, {"n": 1})


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_spec(spec: str, *, max_tokens: int | None = None) -> list[StrategySetting]:
    """``NAME[:KEY=V1,V2...]`` -> one StrategySetting per combination of values (validated)."""
    name, *parts = [p.strip() for p in spec.strip().split(":")]
    if not name:
        raise InvalidInputError(f"Empty strategy spec {spec!r}; write e.g. best-of-n:n=4,8,16.")
    canonical = canonical_strategy_name(name)  # raises UnknownStrategyError naming the choices
    variant = VARIANTS.get(canonical)
    chat_model = variant.chat_model if variant else chat_model_class(canonical)
    grid: dict[str, list[Any]] = {}
    for part in parts:
        key, sep, values = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values.strip():
            raise InvalidInputError(f"In strategy spec {spec!r}: expected KEY=V1,V2 after ':', got {part!r}.")
        grid[key] = [_value(v.strip()) for v in values.split(",")]
    renamed = variant.renamed if variant else {}
    fields = {k for k in chat_model.model_fields if k not in _HARNESS_FIELDS}
    unknown = sorted(k for k in grid if renamed.get(k, k) not in fields)
    if unknown:
        raise InvalidInputError(
            f"Strategy spec {spec!r}: unknown setting(s) {unknown} for {canonical!r}; "
            f"it takes {sorted(fields | set(renamed))}."
        )
    settings = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        chosen = {**(variant.fixed if variant else {}), **{renamed.get(k, k): v for k, v in values.items()}}
        if max_tokens is not None:
            chosen.setdefault("max_tokens", max_tokens)
        setting = StrategySetting(canonical, values, chat_model, chosen)
        try:
            setting.build()  # cheap: validates the settings, loads nothing
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, p['loc']))}={p.get('input')!r}: {p['msg']}" for p in exc.errors()
            )
            raise InvalidInputError(
                f"Strategy spec {spec!r} ({setting.label or 'defaults'}): {problems}."
            ) from None
        except ValueError as exc:
            raise InvalidInputError(
                f"Strategy spec {spec!r} ({setting.label or 'defaults'}): {exc}"
            ) from None
        settings.append(setting)
    return settings


def parse_specs(specs: list[str], *, max_tokens: int | None = None) -> list[StrategySetting]:
    """Every setting of every spec, in order; duplicates are an error (they would share results)."""
    if not specs:
        raise InvalidInputError("No strategies given; pass e.g. --strategies best-of-n:n=1,4,16 sea.")
    settings = [s for spec in specs for s in parse_spec(spec, max_tokens=max_tokens)]
    keys = [s.key for s in settings]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise InvalidInputError(f"Strategy settings given twice: {duplicated}; list each once.")
    return settings
