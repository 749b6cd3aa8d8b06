"""SEA's result assembly: each chain's best text and its revision as candidates, the chosen one,
and what the run measured (trace, flags, the fluency guard's exclusions, timings)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Completion, FinishReason
from align_chains.models.policy import Policy
from align_chains.strategies.base import Candidate, StrategyResult
from align_chains.strategies.candidates import best_index, candidate_from, chosen_result
from align_chains.strategies.fluency_guard import GuardVerdict

if TYPE_CHECKING:
    from align_chains.strategies.sea import SEA


@dataclass
class Chain:
    """The best text a chain has found so far (or a revision of it), as a completion."""

    completion: Completion
    reward: float | None
    iteration: int  # 0: the chain's initial sample; -1: a revision
    guard: GuardVerdict | None = None  # the fluency guard's measurements (None for an initial sample)

    @property
    def text(self) -> str:
        return self.completion.text

    @property
    def tokens(self) -> list[int]:
        return self.completion.token_ids

    @property
    def logprobs(self) -> list[float]:
        return self.completion.logprobs


def cut_at_stop(
    policy: Policy, ids: list[int], logprobs: list[float], stop: Sequence[str]
) -> tuple[list[int], list[float], str, FinishReason]:
    """An optimised answer ends at its first stop string, as a sampled one does (``Decoder.completions``):
    the text is cut before it and the tokens after the one completing it are dropped.
    Returns ``(token_ids, logprobs, text, finish_reason)``."""
    text = policy.decode(ids)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut < 0:
        return ids, logprobs, text, "length"
    n = next((n for n in range(1, len(ids)) if any(s in policy.decode(ids[:n]) for s in stop)), len(ids))
    return ids[:n], logprobs[:n], text[:cut], "stop"


@dataclass
class RunLog:
    """What one SEA run measured, for its results."""

    trace: list[dict[str, Any]] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)
    excluded: list[dict[str, Any]] = field(default_factory=list)  # texts the guard kept from being chosen
    soft_calls: int = 0
    iteration_seconds: list[float] = field(default_factory=list)
    iteration_decode_passes: list[int] = field(default_factory=list)
    decode_passes: int = 0
    guard_passes: int = 0


def trace_record(
    row: int,
    chains: int,
    iteration: int,
    soft: float | None,
    hard: float | None,
    nll: float | None,
    energy: float | None,
    text: str,
    sigma: float | None = None,
) -> dict[str, Any]:
    """One trace entry of chain ``row`` (prompt ``row // chains``)."""
    return {
        "prompt": row // chains,
        "chain": row % chains,
        "iteration": iteration,
        "soft_reward": soft,
        "hard_reward": hard,
        "nll": nll,
        "energy": energy,
        "noise": sigma,
        "text": text,
    }


def _candidates(best: list[Chain], revised: list[Chain], rows: range, chains: int) -> list[Candidate]:
    """A prompt's candidates: each chain's best, then (when revised) each chain's revision."""

    def meta(r: int, chain: Chain, kind: str) -> dict[str, Any]:
        found = {"chain": r % chains, "kind": kind}
        if kind == "optimized":
            found["iteration"] = chain.iteration
        return {**found, "guard": chain.guard.as_dict() if chain.guard is not None else None}

    optimised = [
        candidate_from(best[r].completion, best[r].reward, meta(r, best[r], "optimized")) for r in rows
    ]
    revisions = [
        candidate_from(revised[r].completion, revised[r].reward, meta(r, revised[r], "revised"))
        for r in (rows if revised else ())
    ]
    return optimised + revisions


def _guard_details(sea: SEA, excluded: list[dict[str, Any]], guard_passes: int) -> dict[str, Any]:
    if not sea.fluency_guard:
        return {"on": False}
    return {
        "on": True,
        "nll_margin": sea.guard_nll_margin,
        "max_repetition": sea.guard_max_repetition,
        "ngram": sea.guard_ngram,
        "excluded": [{k: v for k, v in e.items() if k != "prompt"} for e in excluded],
        "forward_passes": guard_passes,
    }


def _admitted(candidate: Candidate) -> bool:
    guard = candidate.meta.get("guard")
    return guard is None or guard["reason"] is None


def _median(values: list[float] | list[int]) -> float | None:
    return statistics.median(values) if values else None


def results(
    sea: SEA,
    log: RunLog,
    chains: tuple[list[Chain], list[Chain]],
    iterations_done: list[int],
    scorer: Any,
    prompt_tokens: Sequence[int],
    counters: ComputeCounters,
) -> list[StrategyResult]:
    """One result per prompt: the best admitted candidate among its chains' bests and revisions."""
    best, revised = chains
    out = []
    for p, tokens in enumerate(prompt_tokens):
        rows = range(p * sea.chains, (p + 1) * sea.chains)
        candidates = _candidates(best, revised, rows, sea.chains)
        # a chain's best passed the guard when it was kept (its initial sample always does)
        admitted = [j for j, c in enumerate(candidates) if not sea.fluency_guard or _admitted(c)]
        chosen = best_index([c.reward for c in candidates], admitted)
        chosen = 0 if chosen is None else chosen
        nonfinite = [r % sea.chains for r in log.flags.get("nonfinite_energy_chains", []) if r in rows]
        flags = {k: v for k, v in log.flags.items() if k != "nonfinite_energy_chains"}
        if nonfinite:
            flags["nonfinite_energy_chains"] = nonfinite
        excluded = [e for e in log.excluded if e["prompt"] == p]
        meta = candidates[chosen].meta
        if excluded and meta["kind"] == "optimized" and meta["iteration"] == 0:
            flags["fluency_guard_fallback"] = True  # every text better than a sample was excluded
        details = {
            "iterations": max(iterations_done[r] for r in rows),
            "iterations_per_chain": [iterations_done[r] for r in rows],
            "chains": sea.chains,
            "reward_path": scorer.path,
            "vocab_coverage": scorer.coverage,
            "decode_passes": log.decode_passes,
            "seconds_per_iteration": _median(log.iteration_seconds),
            "decode_passes_per_iteration": _median(log.iteration_decode_passes),
            "soft_reward_calls": log.soft_calls,
            "fluency_guard": _guard_details(sea, excluded, log.guard_passes),
        }
        trace = [t for t in log.trace if t["prompt"] == p]
        out.append(
            chosen_result(
                sea.name,
                candidates,
                chosen,
                prompt_tokens=tokens,
                counters=replace(counters),
                trace=trace,
                flags=flags,
                details=details,
            )
        )
    return out
