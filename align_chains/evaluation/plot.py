"""Reward-per-compute curves of an evaluation (matplotlib, imported only when a plot is drawn).

Four panels, one curve per strategy (its settings ordered by generated tokens), 95% bootstrap
intervals as error bars, the plain sample as a dashed reference:

1. optimised reward vs generated tokens per prompt;
2. optimised reward vs wall seconds per prompt;
3. held-out reward vs generated tokens (does the gain transfer to a signal nobody optimised?);
4. win rate against the plain sample vs generated tokens, with Best-of-N's ceiling n/(n+1).

Best-of-N points are annotated with the KL bound log n − (n−1)/n: how far, at most, Best-of-n's
answers drift from the policy's distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def bon_kl_bound(n: int) -> float:
    """KL(Best-of-n || policy) <= log n − (n − 1)/n (Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def bon_win_ceiling(n: int) -> float:
    """Best-of-n beats one sample with probability n/(n+1) when rewards have no ties."""
    return n / (n + 1)


def _bon_n(row: dict[str, Any]) -> int | None:
    if row["strategy"] == "plain":
        return 1
    if row["strategy"] == "best-of-n":
        return int(row["settings"].get("n", 4))
    return None


def plot_curves(summary: Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """Draw the four panels from ``EvalReport.summary()`` rows; save to ``path`` if given."""
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Plots need matplotlib: pip install 'align-chains[plot]'.") from exc

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    panels = [
        (axes[0][0], "generated_tokens", "reward", "optimised reward"),
        (axes[0][1], "seconds", "reward", "optimised reward"),
        (axes[1][0], "generated_tokens", "holdout", "held-out reward"),
        (axes[1][1], "generated_tokens", "win_rate", "win rate vs the plain sample"),
    ]
    strategies = list(dict.fromkeys(r["strategy"] for r in summary))
    colours = plt.get_cmap("tab10")
    plain = next((r for r in summary if r["strategy"] == "plain"), None)
    for ax, x_key, y_key, y_label in panels:
        for i, strategy in enumerate(strategies):
            rows = sorted(
                (r for r in summary if r["strategy"] == strategy and r[y_key]["mean"] is not None),
                key=lambda r: r["compute"][x_key],
            )
            if not rows:
                continue
            xs = [max(r["compute"][x_key], 1e-3) for r in rows]
            ys = [r[y_key]["mean"] for r in rows]
            errs = [[y - r[y_key]["ci"][0] for y, r in zip(ys, rows, strict=True)],
                    [r[y_key]["ci"][1] - y for y, r in zip(ys, rows, strict=True)]]  # fmt: skip
            marker = "*" if strategy == "plain" else "o"
            ax.errorbar(xs, ys, yerr=errs, marker=marker, capsize=3, color=colours(i % 10), label=strategy)
            if strategy == "best-of-n" and y_key == "reward" and x_key == "generated_tokens":
                for x, y, r in zip(xs, ys, rows, strict=True):
                    n = _bon_n(r)
                    ax.annotate(f"n={n}\nKL≤{bon_kl_bound(n):.2f}", (x, y), fontsize=7,
                                textcoords="offset points", xytext=(4, -18))  # fmt: skip
        if plain is not None and plain[y_key]["mean"] is not None:
            ax.axhline(plain[y_key]["mean"], linestyle="--", color="grey", linewidth=1)
        if y_key == "win_rate":
            bon = sorted(
                (r for r in summary if _bon_n(r) is not None), key=lambda r: r["compute"]["generated_tokens"]
            )
            if bon:
                ax.plot(
                    [max(r["compute"]["generated_tokens"], 1e-3) for r in bon],
                    [bon_win_ceiling(_bon_n(r) or 1) for r in bon],
                    linestyle=":", color="black", label="Best-of-n ceiling n/(n+1)",
                )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(
            "generated tokens per prompt" if x_key == "generated_tokens" else "wall seconds per prompt"
        )
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    axes[1][1].legend(fontsize=8, loc="best")
    fig.suptitle("Reward per compute (mean over prompts, 95% bootstrap CI; dashed: plain sample)")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig
