"""Plots of strategy traces. matplotlib is optional: it is imported only when a plot is drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from align_chains.errors import InvalidInputError
from align_chains.strategies.darwin_trace import Replace, Score, Seed


def plot_darwin_trace(
    trace: Sequence[Mapping[str, Any]], path: str | Path | None = None, prompt: int = 0
) -> Any:
    """One panel per DARWIN cycle: each candidate's reward at every scoring, replacements as arrows.

    ``trace`` is ``StrategyResult.trace`` of a ``Darwin`` run (or ``response_metadata["trace"]`` of
    ``RerankChatModel(strategy="darwin")``), read back as ``darwin_trace`` events. Line colour is
    the mutation a row decodes from; an arrow marks a row replaced by a copy of a top-k row; the
    dashed line is the reward of the first answer s0. Returns the matplotlib figure (saved to
    ``path`` if given).
    """
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plot_darwin_trace needs matplotlib: pip install matplotlib (or -e .[bench])"
        ) from exc

    records = [r for r in trace if r.get("prompt", 0) == prompt]
    scores = [Score.from_record(r) for r in records if r.get("event") == Score.event]
    if not scores:
        raise InvalidInputError(
            f"This trace has no DARWIN scoring records (event == {Score.event!r}) to plot."
        )
    replaced = [Replace.from_record(r) for r in records if r.get("event") == Replace.event]
    seed = next((Seed.from_record(r).reward for r in records if r.get("event") == Seed.event), None)
    cycles = sorted({score.cycle for score in scores})
    fig, axes = plt.subplots(1, len(cycles), figsize=(4.2 * len(cycles), 3.4), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, cycle in zip(axes[0], cycles, strict=True):
        rows = sorted({score.row for score in scores if score.cycle == cycle})
        for row in rows:
            points = sorted(
                (score.segment, score.reward, score.mutation)
                for score in scores
                if (score.cycle, score.row) == (cycle, row)
            )
            for (s0, r0, _), (s1, r1, m1) in pairwise(points):  # coloured by the row's mutation after
                ax.plot([s0, s1], [r0, r1], color=colours(m1 % 10), alpha=0.8)
            for s, r, m in points:
                ax.scatter([s], [r], color=colours(m % 10), s=14, zorder=3)
        for event in (e for e in replaced if e.cycle == cycle):
            ax.annotate(
                "", xy=(event.segment + 0.15, event.source_reward),
                xytext=(event.segment, event.reward),
                arrowprops={"arrowstyle": "->", "color": "grey", "alpha": 0.6},
            )  # fmt: skip
        if seed is not None:
            ax.axhline(seed, linestyle="--", color="black", linewidth=1, label="s0")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"cycle {cycle} (colour: mutation; arrow: replaced by a copy)", fontsize=9)
        ax.set_xlabel("segment (every m tokens)")
    axes[0][0].set_ylabel("reward vs. the original instruction")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
