"""What an evaluation cell keeps of a strategy's search: its candidates and its own trace, capped.

The report's details panel shows every candidate a strategy chose from and the strategy's trace
(DARWIN's archive and replacements, SEA's reward per iteration, early rejection's decisions,
adaptive Best-of-N's allocation). A cell keeps them within fixed caps so that a 2,000-prompt run
stays a file a browser can open; each cut is recorded next to what was kept, so the page can say
how much is missing. The caps are documented in docs/evaluation.md.
"""

from __future__ import annotations

import math
from typing import Any

from align_chains.strategies.base import StrategyResult

MAX_CANDIDATES = 32
"""Candidates kept per cell: the chosen one, then the highest rewards (all rewards are kept)."""
MAX_TEXT_CHARS = 4000
"""Characters kept of each candidate's text (and of any string in the details and the trace)."""
MAX_REWARDS = 1024
"""Candidate rewards kept per cell (for the distribution chart), in candidate order."""
MAX_TRACE_RECORDS = 400
"""Trace records kept per cell, from the start of the search."""
MAX_LIST_ITEMS = 256
"""Items kept of any list inside the details or a trace record."""

CAPS = {
    "candidates": MAX_CANDIDATES,
    "text_chars": MAX_TEXT_CHARS,
    "candidate_rewards": MAX_REWARDS,
    "trace_records": MAX_TRACE_RECORDS,
    "list_items": MAX_LIST_ITEMS,
}


def plain(value: Any, depth: int = 0) -> Any:
    """JSON-ready and bounded: non-finite floats become None, strings and lists are cut to the caps."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value[:MAX_TEXT_CHARS]
    if depth > 6:
        return str(value)[:MAX_TEXT_CHARS]
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in list(value)[:MAX_LIST_ITEMS]]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return plain(value.item(), depth)
    return str(value)[:MAX_TEXT_CHARS]


def kept_candidates(result: StrategyResult) -> list[dict[str, Any]]:
    """The chosen candidate and the best-rewarded others, up to MAX_CANDIDATES, in candidate order."""
    ranked = sorted(
        (i for i in range(len(result.candidates)) if i != result.best_index),
        key=lambda i: (result.candidates[i].reward is None, -(result.candidates[i].reward or 0.0), i),
    )
    indices = sorted([result.best_index, *ranked[: MAX_CANDIDATES - 1]])
    kept = []
    for i in indices:
        c = result.candidates[i]
        record: dict[str, Any] = {
            "index": i,
            "text": c.text[:MAX_TEXT_CHARS],
            "reward": plain(c.reward),
            "tokens": c.num_tokens,
            "finish_reason": c.finish_reason,
            "chosen": i == result.best_index,
        }
        if len(c.text) > MAX_TEXT_CHARS:
            record["text_chars"] = len(c.text)  # the length before the cut
        if c.meta:
            record["meta"] = plain(c.meta)
        kept.append(record)
    return kept


def cell_details(result: StrategyResult) -> dict[str, Any]:
    """The keys a cell gains from its strategy result (see the module docstring for the caps).

    ``candidates`` (kept ones, each with ``chosen``), ``candidates_total``, ``candidate_rewards``
    (every candidate's reward, to MAX_REWARDS), ``chosen_index``, ``finish_reason``, ``details``
    and ``flags`` (the strategy's own facts), ``trace`` (to MAX_TRACE_RECORDS) and ``trace_total``.
    """
    return {
        "chosen_index": result.best_index,
        "finish_reason": result.finish_reason,
        "candidates": kept_candidates(result),
        "candidates_total": len(result.candidates),
        "candidate_rewards": [plain(c.reward) for c in result.candidates[:MAX_REWARDS]],
        "details": plain(result.details),
        "flags": plain(result.flags),
        "trace": [plain(record) for record in result.trace[:MAX_TRACE_RECORDS]],
        "trace_total": len(result.trace),
    }
