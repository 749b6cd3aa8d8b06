"""DARWIN's selection rules: the top k at a scoring, the copy plan, and the archive's evolution.

Pure functions of rewards and counts (no model, no backend), used by the one DARWIN search
(``darwin_driver.py``) whichever backend writes the candidates.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from align_chains.strategies.darwin_trace import Winner, finite


def value(reward: float | None) -> float:
    """A reward for ranking: an unscored candidate (None) ranks below every scored one."""
    return float("-inf") if reward is None else reward


def top_k(rows: Sequence[int], rewards: Sequence[float | None], k: int) -> list[int]:
    """The ``k`` best of ``rows`` by ``rewards[row]`` (unscored last; ties: lower row first)."""
    return sorted(rows, key=lambda r: (-value(rewards[r]), r))[:k]


def copy_plan(
    rows: Sequence[int], top: Sequence[int], finished: Sequence[bool], rng: random.Random
) -> list[tuple[int, int]]:
    """(row, source) for every unfinished row outside ``top``: it takes a random top row's answer.

    Rows are visited in order and each draws one ``rng.choice``, so a seeded search replays.
    """
    top = list(top)
    return [(r, rng.choice(top)) for r in rows if r not in top and not finished[r]]


def archive_winners(
    wins: Counter[int], final: Sequence[tuple[int, float | None]], parent_reward: float
) -> list[tuple[int, float | None, bool]]:
    """The two mutations most often in the top k, their best final reward, and whether it beats the parent.

    ``wins`` counts, per mutation, how often a row decoding from it was in the top k at a
    scoring; ``final`` is (mutation, final reward) per row at the end of the cycle. Ties in
    wins go to the higher final reward, then the lower mutation index. A winner that no row
    carries any more (all its rows were replaced) has no final reward and is not added.
    """
    best_final: dict[int, float] = {}
    for mutation, reward in final:
        if reward is not None:
            best_final[mutation] = max(best_final.get(mutation, reward), reward)
    ranked = sorted(wins, key=lambda i: (-wins[i], -best_final.get(i, float("-inf")), i))[:2]
    out = []
    for i in ranked:
        reward = best_final.get(i)
        out.append((i, reward, reward is not None and reward > parent_reward))
    return out


def update_archive(
    archive: dict[str, float],
    parent: str,
    mutations: Sequence[str],
    wins: Counter[int],
    final: Sequence[tuple[int, float | None]],
) -> list[tuple[int, float | None, bool]]:
    """Add to ``archive`` the winners (``archive_winners``) that beat ``archive[parent]``; return them all.

    As in the authors' ``utils.py``: an added instruction takes its new reward (replacing an older
    entry of the same text), and a parent that a different instruction beat leaves the archive, so
    later cycles stop re-drawing it. The archive never empties: a parent leaves only for a winner.
    """
    winners = archive_winners(wins, final, archive[parent])
    new: dict[str, float] = {}  # the same text twice (a list that fell back to its parent): the better
    for i, reward, added in winners:
        if added:
            assert reward is not None
            new[mutations[i]] = max(reward, new.get(mutations[i], reward))
    archive.update(new)
    if any(text != parent for text in new):
        archive.pop(parent, None)
    return winners


def evolve_archive(
    archive: dict[str, float],
    cycle: int,
    parent: str,
    mutations: Sequence[str],
    wins: Counter[int],
    final: Sequence[tuple[int, float | None]],
) -> list[Winner]:
    """``update_archive`` at the end of a cycle, as the trace's ``Winner`` events."""
    threshold = finite(archive[parent])
    return [
        Winner(cycle=cycle, mutation=i, instruction=mutations[i], wins=wins[i], reward=reward,
               parent_reward=threshold, added=added)
        for i, reward, added in update_archive(archive, parent, mutations, wins, final)
    ]  # fmt: skip
