"""Paired comparisons for the report: two settings (or two runs) on the same prompts.

For a metric (a reward, or success as 0/1) and the prompts where both sides have a value: the
wins, losses and ties, the mean difference with a 95% percentile bootstrap interval (prompts
resampled with replacement: 2,000 resamples drawn as ``evaluation.stats.bootstrap_ci`` draws
them, seed 0, so the interval is the one it gives), and a two-sided sign-flip permutation test
of the mean difference: exact over all 2^n sign patterns up to n = 16 prompts, else 10,000 random
patterns (seed 0; p = (hits + 1) / (10,000 + 1)). The test assumes only that, with no real
difference, each prompt's difference is as likely positive as negative.

Comparisons that share their prompts are computed together, as matrix products over one set of
resamples, so a 2,000-prompt, 12-setting report (66 pairs per metric) takes seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

EXACT_UP_TO = 16
"""Prompts up to which the permutation test enumerates every sign pattern."""
PERMUTATIONS = 10_000
"""Random sign patterns above EXACT_UP_TO prompts."""
BOOTSTRAP = 2_000
"""Bootstrap resamples of the prompts."""
_CHUNK = 2_000  # rows of a resample matrix multiplied at once (bounds memory)


def _bootstrap(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile intervals of the column means of ``d`` [n, G], one resample set for all columns."""
    n = d.shape[0]
    if n == 1:
        return d[0].copy(), d[0].copy()
    idx = np.random.default_rng(0).integers(0, n, size=(BOOTSTRAP, n))  # as bootstrap_ci draws them
    means = np.empty((BOOTSTRAP, d.shape[1]))
    for start in range(0, BOOTSTRAP, _CHUNK):
        rows = idx[start : start + _CHUNK]
        flat = (rows + n * np.arange(len(rows))[:, None]).ravel()
        counts = np.bincount(flat, minlength=len(rows) * n).reshape(len(rows), n).astype(float)
        means[start : start + _CHUNK] = counts @ d / n
    low, high = np.quantile(means, [0.025, 0.975], axis=0)
    return low, high


def _sign_flip(d: np.ndarray) -> np.ndarray:
    """Two-sided sign-flip p-values of the column means of ``d`` [n, G] (see the module docstring)."""
    n = d.shape[0]
    observed = np.abs(d.mean(axis=0)) - 1e-12
    if n <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        return np.mean(np.abs(signs @ d) / n >= observed, axis=0)
    rng = np.random.default_rng(0)
    hits = np.zeros(d.shape[1])
    for start in range(0, PERMUTATIONS, _CHUNK):
        rows = min(_CHUNK, PERMUTATIONS - start)
        signs = rng.integers(0, 2, size=(rows, n)).astype(float) * 2.0 - 1.0
        hits += np.sum(np.abs(signs @ d) / n >= observed, axis=0)
    return (hits + 1.0) / (PERMUTATIONS + 1.0)


def compare(
    pairs: Sequence[tuple[Sequence[float | None], Sequence[float | None]]],
) -> list[dict[str, Any] | None]:
    """For each (A, B) pair of equal-length value lists: A vs B over the positions both have.

    Each result is ``{"n", "wins", "losses", "ties", "mean", "low", "high", "p"}`` (``wins``:
    positions where A is higher; ``mean``: of A − B), or None when no position has both values.
    """
    out: list[dict[str, Any] | None] = [None] * len(pairs)
    groups: dict[bytes, list[int]] = {}
    arrays = []
    for k, (a, b) in enumerate(pairs):
        x = np.array([np.nan if v is None else v for v in a], dtype=float)
        y = np.array([np.nan if v is None else v for v in b], dtype=float)
        mask = ~(np.isnan(x) | np.isnan(y))
        arrays.append(x[mask] - y[mask])
        if mask.any():
            groups.setdefault(mask.tobytes() + bytes(str(mask.size), "ascii"), []).append(k)
    for members in groups.values():
        d = np.stack([arrays[k] for k in members], axis=1)
        low, high = _bootstrap(d)
        p = _sign_flip(d) if np.any(d) else np.ones(d.shape[1])
        for column, k in enumerate(members):
            diff = d[:, column]
            out[k] = {
                "n": int(diff.size),
                "wins": int(np.sum(diff > 0)),
                "losses": int(np.sum(diff < 0)),
                "ties": int(np.sum(diff == 0)),
                "mean": float(diff.mean()),
                "low": float(low[column]),
                "high": float(high[column]),
                "p": 1.0 if not np.any(diff) else float(p[column]),
            }
    return out


def all_pairs(columns: Sequence[Sequence[float | None]]) -> list[list[Any]]:
    """``[i, j, stats]`` for every pair of settings i < j (stats of i minus j), where both have values.

    ``columns[s][p]`` is setting s's value on prompt p (None where missing). B vs A is A vs B
    with the signs and wins/losses swapped; the page does that flip.
    """
    index = list(itertools.combinations(range(len(columns)), 2))
    results = compare([(columns[i], columns[j]) for i, j in index])
    return [[i, j, stats] for (i, j), stats in zip(index, results, strict=True) if stats is not None]
