"""Admission control: what a request would cost, refused before it runs if over the limits.

Bounding a few named fields is not enough: DARWIN's work is cycles x (mutation tokens + n x
max_tokens), SEA's chains x iterations x length, and each factor can look harmless alone. So
every request's strategy (the one its settings build, so ``best-of-n`` with ``rejection`` is
costed as early rejection) reports its own ``Cost`` (``Strategy.cost``, declared on the class):

- ``decode_tokens``: tokens sampled across all rows (answers, mutations, SEA's decodes),
- ``forward_passes``: policy forward calls (prefills and decode steps),
- ``reward_items``: responses scored,

and a request over a limit gets a 400 naming the setting that drives the cost and the largest
value it could take with the others as sent. The estimates are upper bounds of the strategies'
own loops (rows that stop early only make a request cheaper). A strategy that declares no cost
is never served (``NoCostModel`` says what to add).

Peak memory is the other dimension: ``admit_memory`` asks ``align_chains.memory.estimate_memory``
(the project's one estimator, checked against measured peaks in docs/gpu.md) for the request's
peak and refuses it, the same way, when that is over the server's ``MemoryBudget``
(``--max-request-memory``, by default 90% of the policy device's memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from align_chains.engine.sampling import SamplingParams
from align_chains.strategies import STRATEGIES, Strategy
from align_chains.strategies.declarations import MAX_TOKENS, Cost, default_limits


class _DefaultLimits(Mapping[str, float]):
    """Setting -> default limit over every registered strategy (live: registering adds to it)."""

    def _limits(self) -> dict[str, float]:
        return default_limits(list(STRATEGIES.values()))

    def __getitem__(self, name: str) -> float:
        return self._limits()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._limits())

    def __len__(self) -> int:
        return len(self._limits())


#: per-setting bounds (``--limit KEY=MAX``), as the registered strategies declare them
DEFAULT_SETTING_LIMITS: Mapping[str, float] = _DefaultLimits()


@dataclass(frozen=True)
class CostLimits:
    """Largest cost one request may have (``--max-decode-tokens`` etc.)."""

    decode_tokens: int = 65_536
    forward_passes: int = 20_000
    reward_items: int = 100_000


_DIMENSIONS = {
    "decode_tokens": ("tokens to decode", "--max-decode-tokens"),
    "forward_passes": ("policy forward passes", "--max-forward-passes"),
    "reward_items": ("responses to score", "--max-reward-items"),
}


class OverBudget(Exception):
    """A request whose estimated cost is over a limit; ``param`` names the setting to lower and
    ``code`` the limit (the OpenAI-style error code the server answers with)."""

    def __init__(self, message: str, param: str | None, code: str = "request_too_expensive") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# -- settings of a built strategy --------------------------------------------------------------
def setting(strategy: Strategy, params: SamplingParams, name: str) -> Any:
    """A setting's value by its request name (``max_tokens`` is ``params.max_new_tokens``)."""
    return params.max_new_tokens if name == MAX_TOKENS else getattr(strategy, name, None)


def with_setting(
    strategy: Strategy, params: SamplingParams, name: str, value: int
) -> tuple[Strategy, SamplingParams]:
    """The strategy and params with one setting changed (not validated: admission only measures)."""
    if name == MAX_TOKENS:
        return strategy, params.model_copy(update={"max_new_tokens": value})
    return strategy.model_copy(update={name: value}), params


def lowest(strategy: Strategy, name: str) -> int:
    """The smallest value a setting may take (its field's ``ge``/``gt``; else 1)."""
    fields = SamplingParams.model_fields if name == MAX_TOKENS else type(strategy).model_fields
    field = fields.get("max_new_tokens" if name == MAX_TOKENS else name)
    for rule in field.metadata if field is not None else ():
        if getattr(rule, "ge", None) is not None:
            return int(rule.ge)
        if getattr(rule, "gt", None) is not None:
            return int(rule.gt) + 1
    return 1


Measure = Callable[[Strategy, SamplingParams], float]


def admit(strategy: Strategy, params: SamplingParams, limits: CostLimits, sent: set[str]) -> Cost:
    """Return the request's cost (``strategy.cost(params)``), or raise ``OverBudget`` naming the
    setting and the limit. ``sent`` are the settings the client chose (the ones worth blaming first).
    A strategy without a cost model raises ``NoCostModel``.
    """
    cost = strategy.cost(params)
    for dimension, (words, flag) in _DIMENSIONS.items():
        limit = getattr(limits, dimension)
        value = getattr(cost, dimension)
        if value <= limit:
            continue
        culprit, largest = largest_fitting(
            strategy, params, cost.factors, lambda s, p, d=dimension: getattr(s.cost(p), d), limit, sent
        )
        raise OverBudget(
            f"This {strategy.name} request ({_shown(strategy, params, cost.factors)}) would need about "
            f"{value:,} {words}, over this server's limit of {limit:,} per request ({flag})"
            f"{_advice(culprit, largest)}. Ask for less.",
            culprit,
        )
    return cost


def _shown(strategy: Strategy, params: SamplingParams, factors: tuple[str, ...]) -> str:
    values = ((name, setting(strategy, params, name)) for name in factors)
    return ", ".join(f"{name}={value}" for name, value in values if value is not None)


def _advice(culprit: str | None, largest: int | None) -> str:
    if culprit is None or largest is None:
        return ""
    return f"; with the other settings as sent, {culprit} can be at most {largest}"


def largest_fitting(
    strategy: Strategy,
    params: SamplingParams,
    factors: tuple[str, ...],
    measure: Measure,
    limit: float,
    sent: set[str],
) -> tuple[str | None, int | None]:
    """The setting to lower and its largest value with ``measure <= limit``, found by bisection
    (costs grow with every factor): a setting the client sent first, then the one cut the most.
    When no setting fits alone, the one whose lowest value saves the most, value None."""
    best: tuple[tuple[bool, float], str, int] | None = None
    saving: tuple[tuple[bool, float], str] | None = None  # the fallback: no setting fits alone
    current = measure(strategy, params)
    for name in factors:
        value = setting(strategy, params, name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        low = lowest(strategy, name)
        if low > value:
            continue

        def at(v: int, name: str = name) -> float:
            return measure(*with_setting(strategy, params, name, v))

        least = at(low)
        if least > limit:  # lowering this one alone cannot fit the limit
            key = (name in sent, current - least)
            if key[1] > 0 and (saving is None or key > saving[0]):
                saving = (key, name)
            continue
        hi = value
        while low < hi:  # the largest v in [low, value] with measure(v) <= limit
            mid = (low + hi + 1) // 2
            if at(mid) <= limit:
                low = mid
            else:
                hi = mid - 1
        fit_key = (name in sent, value / max(low, 1))  # a setting the client sent, cut the most
        if best is None or fit_key > best[0]:
            best = (fit_key, name, low)
    if best is not None:
        return best[1], best[2]
    if saving is not None:
        return saving[1], None
    sent_factors = [n for n in factors if n in sent]
    return (sent_factors or [factors[0]])[0], None


# -- peak memory -------------------------------------------------------------------------------
#: the share of the device's memory one request may plan to use when no budget is given: the
#: rest is headroom for the allocator's fragmentation, the runtime and the estimate's error
#: (within 25% of measured peaks, docs/gpu.md)
AUTO_MEMORY_FRACTION = 0.9
_UNITS = {"": 1, "b": 1} | {
    prefix + suffix: base**power
    for power, prefix in enumerate("kmgt", 1)
    for suffix, base in (("", 1000), ("b", 1000), ("ib", 1024))
}


def parse_memory_size(text: str) -> int | None:
    """``"auto"`` -> None; ``"24GiB"``, ``"512MiB"``, ``"8GB"``, ``"1e9"`` -> bytes."""
    cleaned = str(text).strip().lower().replace(" ", "")
    if cleaned == "auto":
        return None
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number) :]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ValueError(
            f"a memory size like 24GiB, 512MiB, 8GB or a number of bytes (or 'auto'); got {text!r}"
        ) from None
    if not value > 0:
        raise ValueError(f"a memory budget must be positive; got {text!r}")
    return int(value)


@dataclass(frozen=True)
class MemoryBudget:
    """The most memory one request's estimated peak (weights included) may need."""

    bytes: int
    source: str  # where the number came from, shown in errors and on /v1/models

    @classmethod
    def resolve(cls, configured: int | None, device: Any) -> MemoryBudget:
        """``configured`` bytes (``--max-request-memory``), else 90% of the device's memory."""
        if configured is not None:
            return cls(configured, "set by --max-request-memory")
        from align_chains.memory import device_memory

        total, what = device_memory(device)
        return cls(int(total * AUTO_MEMORY_FRACTION), f"auto: {AUTO_MEMORY_FRACTION:.0%} of {what}")


def admit_memory(
    strategy: Strategy,
    params: SamplingParams,
    peak: Callable[[Strategy, SamplingParams], Any],
    budget: MemoryBudget,
    sent: set[str],
) -> Any:
    """The request's ``MemoryEstimate`` (``peak(strategy, params)``), or ``OverBudget`` naming the
    setting to lower and its largest value that fits, when the estimated peak is over the budget."""
    estimate = peak(strategy, params)
    if estimate.total <= budget.bytes:
        return estimate
    factors = strategy.cost(params).factors
    culprit, largest = largest_fitting(
        strategy, params, factors, lambda s, p: _total_or_inf(peak, s, p), budget.bytes, sent
    )
    parts = ", ".join(
        f"{name.replace('_', ' ')} {_gib(getattr(estimate, name))}"
        for name in estimate.COMPONENTS
        if getattr(estimate, name) >= 0.05 * estimate.total
    )
    raise OverBudget(
        f"This {strategy.name} request ({_shown(strategy, params, factors)}, a "
        f"{estimate.tokens - params.max_new_tokens}-token prompt) would need about {_gib(estimate.total)} "
        f"of memory at its peak ({estimate.peak_phase}: {parts}), over this server's budget of "
        f"{_gib(budget.bytes)} per request ({budget.source}){_advice(culprit, largest)}. "
        "Ask for less (the server's operator can raise the budget with --max-request-memory).",
        culprit,
        code="memory_budget_exceeded",
    )


def _total_or_inf(
    peak: Callable[[Strategy, SamplingParams], Any], strategy: Strategy, params: SamplingParams
) -> float:
    try:
        return peak(strategy, params).total
    except ValueError:  # settings the estimator refuses together never fit
        return math.inf


def _gib(value: int) -> str:
    return f"{value / 1024**3:.2f} GiB" if value >= 1024**3 else f"{value / 1024**2:.0f} MiB"
