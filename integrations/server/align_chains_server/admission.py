"""Admission control: what a request would cost, refused before it runs if over the limits.

Bounding a few named fields is not enough: DARWIN's work is cycles x (mutation tokens + n x
max_tokens), SEA's chains x iterations x length, and each factor can look harmless alone. So
every request's chat model (its settings validated, defaults filled in) goes through a cost
model per strategy that counts

- ``decode_tokens``: tokens sampled across all rows (answers, mutations, SEA's decodes),
- ``forward_passes``: policy forward calls (prefills and decode steps),
- ``reward_items``: responses scored,

and a request over a limit gets a 400 naming the setting that drives the cost and the largest
value it could take with the others as sent. The estimates are upper bounds of the strategies'
own loops (rows that stop early only make a request cheaper).

Peak memory is the other dimension: ``admit_memory`` asks ``align_chains.memory.estimate_memory``
(the project's one estimator, checked against measured peaks in docs/gpu.md) for the request's
peak and refuses it, the same way, when that is over the server's ``MemoryBudget``
(``--max-request-memory``, by default 90% of the policy device's memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# Per-setting bounds, applied to the settings a strategy has (``--limit KEY=MAX``).
DEFAULT_SETTING_LIMITS: dict[str, float] = {
    "max_tokens": 1024,
    "n": 64,
    "budget": 64,
    "k": 1000,
    "m": 1024,
    "cycles": 20,
    "mutation_max_tokens": 512,
    "max_total_tokens": 200_000,
    "beams": 16,
    "samples": 16,
    "chunk_tokens": 1024,
    "chains": 16,
    "iterations": 200,
    "decode_top_k": 1000,
    "time_budget_s": 3600,
}


@dataclass(frozen=True)
class CostLimits:
    """Largest cost one request may have (``--max-decode-tokens`` etc.)."""

    decode_tokens: int = 65_536
    forward_passes: int = 20_000
    reward_items: int = 100_000


@dataclass(frozen=True)
class Cost:
    """An upper bound on one request's work."""

    decode_tokens: int
    forward_passes: int
    reward_items: int
    rows: int  # rows decoded side by side (KV-cache rows of the policy)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class CostModel:
    """A strategy's cost as a function of its settings, and the settings that multiply it."""

    estimate: Callable[[dict[str, Any]], Cost]
    factors: tuple[str, ...]  # integer settings the cost grows with, most specific first
    minimum: dict[str, int] = field(default_factory=dict)


def _best_of_n(s: dict[str, Any]) -> Cost:
    t = s["max_tokens"]
    if s.get("allocation") == "adaptive":
        b = s["budget"] if s.get("budget") is not None else s["n"]
        return Cost(b * t, 2 + 2 * t, b, b)  # two stages, the second restarted from the cache
    return Cost(s["n"] * t, 1 + t, s["n"], s["n"])


def _darwin(s: dict[str, Any]) -> Cost:
    t, mut, cycles, n = s["max_tokens"], s["mutation_max_tokens"], s["cycles"], s["n"]
    segments = math.ceil(t / s["m"])
    decode = t + mut + cycles * (mut + n * t)  # s0 and its mutation list; per cycle a list and n answers
    passes = 2 + max(t, mut) + cycles * (2 + mut + t)
    if s.get("max_total_tokens") is not None:  # DARWIN stops at its own token cap
        decode = min(decode, s["max_total_tokens"])
        passes = min(passes, decode + 2 * (cycles + 1))
    return Cost(decode, passes, 1 + cycles * n * segments, max(n, 2))


def _sea(s: dict[str, Any]) -> Cost:
    t, chains, iterations = s["max_tokens"], s["chains"], s["iterations"]
    # initial samples, then per iteration one pass over the relaxed sequence and a decode of
    # up to L positions (one pass each past the argmax), all chains as rows of one tensor
    decode = chains * t * (1 + iterations)
    passes = 1 + t + iterations * (1 + t)
    return Cost(decode, passes, chains * (1 + 2 * iterations), chains)


def _value_guided(s: dict[str, Any]) -> Cost:
    t, width = s["max_tokens"], s["beams"] * s["samples"]
    views = 3  # the policy plus, at most, a tuned and an untuned guide decoded in lockstep
    chunks = math.ceil(t / s["chunk_tokens"])
    return Cost(width * t, views * (1 + t), width * chunks, width)


def _reward_guided(s: dict[str, Any]) -> Cost:
    t = s["max_tokens"]
    return Cost(t, 2 * (1 + t), s["k"] * t + 1, 1)  # a scorer forward per step beside the policy's


def _early_rejection(s: dict[str, Any]) -> Cost:
    t, n = s["max_tokens"], s["n"]
    every = s["decision_every"] if isinstance(s.get("decision_every"), int) else 1
    # at most Best-of-n's tokens (rejection only removes rows); every row's partial answer may be
    # scored at each decision, and every finished one once more
    return Cost(n * t, 1 + t, n * (1 + math.ceil(t / every)), n)


def _fallback(s: dict[str, Any]) -> Cost:
    """A strategy with no cost model of its own, bounded as ``n`` (or one) samples of max_tokens."""
    t, n = s["max_tokens"], int(s.get("n") or 1)
    return Cost(n * t, 1 + t, n, n)


#: the model for a strategy registered without one (a new strategy file needs no server edit;
#: add it to COST_MODELS for a tighter bound)
FALLBACK = CostModel(_fallback, ("n", "max_tokens"))

COST_MODELS: dict[str, CostModel] = {
    "best-of-n": CostModel(_best_of_n, ("n", "budget", "max_tokens")),
    "early-rejection": CostModel(_early_rejection, ("n", "max_tokens")),
    "darwin": CostModel(
        _darwin, ("cycles", "n", "mutation_max_tokens", "max_tokens", "m"), {"mutation_max_tokens": 16}
    ),
    "sea": CostModel(_sea, ("iterations", "chains", "max_tokens")),
    "value-guided": CostModel(_value_guided, ("beams", "samples", "max_tokens", "chunk_tokens")),
    "reward-guided": CostModel(_reward_guided, ("k", "max_tokens")),
}

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


def estimate(strategy: str, settings: dict[str, Any]) -> Cost:
    """The cost of one request of ``strategy`` with fully resolved ``settings``."""
    return COST_MODELS.get(strategy, FALLBACK).estimate(settings)


def admit(strategy: str, settings: dict[str, Any], limits: CostLimits, sent: set[str]) -> Cost:
    """Return the request's cost, or raise ``OverBudget`` naming the setting and the limit.

    ``sent`` are the settings the client chose (the ones worth blaming first).
    """
    model = COST_MODELS.get(strategy, FALLBACK)
    cost = model.estimate(settings)
    for dimension, (words, flag) in _DIMENSIONS.items():
        limit = getattr(limits, dimension)
        value = getattr(cost, dimension)
        if value <= limit:
            continue
        culprit, largest = largest_fitting(
            model, settings, lambda s, d=dimension: getattr(model.estimate(s), d), limit, sent
        )
        shown = ", ".join(f"{k}={settings[k]}" for k in model.factors if settings.get(k) is not None)
        advice = (
            f"; with the other settings as sent, {culprit} can be at most {largest}"
            if culprit is not None and largest is not None
            else ""
        )
        raise OverBudget(
            f"This {strategy} request ({shown}) would need about {value:,} {words}, over this server's "
            f"limit of {limit:,} per request ({flag}){advice}. Ask for less.",
            culprit,
        )
    return cost


def largest_fitting(
    model: CostModel,
    settings: dict[str, Any],
    measure: Callable[[dict[str, Any]], float],
    limit: float,
    sent: set[str],
) -> tuple[str | None, int | None]:
    """The setting to lower and its largest value with ``measure(settings) <= limit``, found by
    bisection (costs grow with every factor): a setting the client sent first, then the one cut
    the most. When no setting fits alone, the one whose lowest value saves the most, value None."""
    best: tuple[tuple[bool, float], str, int] | None = None
    saving: tuple[tuple[bool, float], str] | None = None  # the fallback: no setting fits alone
    current = measure(settings)
    for name in model.factors:
        value = settings.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        low = model.minimum.get(name, 1)
        if low > value:
            continue
        lowest = measure({**settings, name: low})
        if lowest > limit:  # lowering this one alone cannot fit the limit
            key = (name in sent, current - lowest)
            if key[1] > 0 and (saving is None or key > saving[0]):
                saving = (key, name)
            continue
        hi = value
        while low < hi:  # the largest v in [low, value] with measure(v) <= limit
            mid = (low + hi + 1) // 2
            if measure({**settings, name: mid}) <= limit:
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
    sent_factors = [n for n in model.factors if n in sent]
    return (sent_factors or [model.factors[0]])[0], None


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
    strategy: str,
    settings: dict[str, Any],
    peak: Callable[[dict[str, Any]], Any],
    budget: MemoryBudget,
    sent: set[str],
) -> Any:
    """The request's ``MemoryEstimate`` (``peak(settings)``), or ``OverBudget`` naming the setting
    to lower and its largest value that fits, when the estimated peak is over the budget."""
    estimate = peak(settings)
    if estimate.total <= budget.bytes:
        return estimate
    model = COST_MODELS.get(strategy, FALLBACK)
    culprit, largest = largest_fitting(model, settings, lambda s: _total_or_inf(peak, s), budget.bytes, sent)
    shown = ", ".join(f"{k}={settings[k]}" for k in model.factors if settings.get(k) is not None)
    parts = ", ".join(
        f"{name.replace('_', ' ')} {_gib(getattr(estimate, name))}"
        for name in estimate.COMPONENTS
        if getattr(estimate, name) >= 0.05 * estimate.total
    )
    advice = (
        f"; with the other settings as sent, {culprit} can be at most {largest}"
        if culprit is not None and largest is not None
        else ""
    )
    raise OverBudget(
        f"This {strategy} request ({shown}, a {estimate.tokens - settings['max_tokens']}-token prompt) "
        f"would need about {_gib(estimate.total)} of memory at its peak ({estimate.peak_phase}: {parts}), "
        f"over this server's budget of {_gib(budget.bytes)} per request ({budget.source}){advice}. "
        "Ask for less (the server's operator can raise the budget with --max-request-memory).",
        culprit,
        code="memory_budget_exceeded",
    )


def _total_or_inf(peak: Callable[[dict[str, Any]], Any], settings: dict[str, Any]) -> float:
    try:
        return peak(settings).total
    except ValueError:  # settings the strategy refuses together (e.g. DARWIN's k > n) never fit
        return math.inf


def _gib(value: int) -> str:
    return f"{value / 1024**3:.2f} GiB" if value >= 1024**3 else f"{value / 1024**2:.0f} MiB"
