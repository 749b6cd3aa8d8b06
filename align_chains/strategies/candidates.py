"""Result assembly shared by every search: a candidate from a completion, the best candidate,
and the result that answers with it.

Each strategy turns the engine's completions into ``Candidate`` records and picks one; writing
these steps once keeps "ties go to the earliest candidate" and "an unscored candidate never
wins" the same rule for every strategy, the searches over a wrapped chat model included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from align_chains.engine.decoder import Completion
from align_chains.strategies.base import Candidate, StrategyResult


def candidate_from(
    completion: Completion, reward: float | None, meta: Mapping[str, Any] | None = None
) -> Candidate:
    """The ``Candidate`` for one completion: its text, tokens, log-probabilities and finish
    reason, with ``reward`` (None: not scored) and ``meta`` (a copy; trace fields such as a row)."""
    return Candidate(
        text=completion.text,
        reward=reward,
        token_ids=completion.token_ids,
        logprobs=completion.logprobs,
        finish_reason=completion.finish_reason,
        meta=dict(meta or {}),
    )


def best_index(rewards: Sequence[float | None], among: Iterable[int] | None = None) -> int | None:
    """Index of the highest reward, ties to the earliest; unscored (None) entries never win.

    ``among`` limits the choice to those indices (e.g. the candidates that keep an output
    contract). None when no candidate in the choice has a reward.
    """
    indices = range(len(rewards)) if among is None else among
    scored = [i for i in indices if rewards[i] is not None]
    if not scored:
        return None
    return max(scored, key=lambda i: (rewards[i], -i))


def chosen_result(strategy: str, candidates: list[Candidate], best: int, **fields: Any) -> StrategyResult:
    """The ``StrategyResult`` that answers with ``candidates[best]`` (its text and reward);
    ``fields``: the rest (``prompt_tokens``, ``counters``, ``trace``, ``flags``, ``details``)."""
    chosen = candidates[best]
    return StrategyResult(
        strategy=strategy,
        text=chosen.text,
        reward=chosen.reward,
        candidates=candidates,
        best_index=best,
        **fields,
    )
