"""Adaptive vs uniform Best-of-N at the same sample budget: batch win rate and survival time.

Evaluates the prompt-adaptive allocation of Raman, Asi, Kale, "Adaptive Best-of-N Alignment"
(arXiv 2505.12050) as implemented in ``align_chains.strategies.allocation``, in two steps:

1. **Pool.** For every prompt in ``benchmarks/data/adaptive_eval_prompts.txt`` the embedded
   policy (SmolLM2-135M-Instruct) samples ``--pool`` responses (48 new tokens at most,
   temperature 0.7) with the library's batched ``Decoder``, and the embedded MiniLM embedding
   reward scores them. The pool (rewards and texts) is cached as JSON in ``--pool-file`` and
   reused by later runs with the same prompts and settings.
2. **Simulation.** Each of ``--batches`` random batches draws K prompts (without replacement)
   and a random permutation of each prompt's pool. Uniform Best-of-B takes the first B pool
   entries of every prompt. Adaptive Best-of-B takes the first d = exploration_size(B, 0.75, K)
   entries as exploration, asks the library's ``allocate`` for the extra samples a_i, and takes
   the next a_i entries. Both spend B * K samples. A prompt's result is the best reward among
   its samples; a batch's result is the mean over its K prompts.

Metrics, per budget B:

- batch win rate (BWR): fraction of batches where adaptive@B's batch mean beats uniform@B's
  (ties count 1/2), with a 95% percentile-bootstrap interval over batches;
- expected survival time: the smallest uniform budget B' >= B for which BWR(adaptive@B vs
  uniform@B') <= 0.5, searched up to the pool size (reported as "> P" if never reached);
- diagnostic: BWR of the same greedy rule (``greedy_allocation``) fed with the expected-max
  curves of each prompt's whole pool, i.e. with the true reward distribution instead of the
  KDE estimate from d samples. It separates estimation error from the allocation rule itself.

A budget B is evaluated only if even the most lopsided allocation fits in the pool,
d + (B - d) * K <= P; other budgets are skipped with a message.

Run from the repository root (matplotlib is in the ``bench`` extra)::

    python benchmarks/eval_adaptive_best_of_n.py
    python benchmarks/eval_adaptive_best_of_n.py --budgets 4 8 16 --batches 2000 --seed 0
    python benchmarks/eval_adaptive_best_of_n.py --json bench-results/adaptive_bon_results.json

``--seed`` seeds the simulation; ``--pool-seed`` seeds pool sampling and is part of the cache
key, so changing ``--seed`` alone reuses the cached pool.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import add_common_options, machine, write_json
from scipy.stats import skew

from align_chains.strategies.allocation import allocate, exploration_size, greedy_allocation

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROMPTS = ROOT / "benchmarks" / "data" / "adaptive_eval_prompts.txt"
DEFAULT_POOL_FILE = ROOT / "bench-results" / "adaptive_bon_pool.json"
DEFAULT_PLOT = ROOT / "docs" / "adaptive_bon_bwr.png"
EXPLORATION = 0.75  # fraction of the budget spent in stage 1 (paper and library default)
MAX_NEW_TOKENS = 48
TEMPERATURE = 0.7
PAPER_MEDIAN_BWR = (0.54, 0.62)


# -- pool -------------------------------------------------------------------------------------
def read_prompts(path: Path) -> list[str]:
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [p for p in prompts if p]


def pool_settings(prompts: list[str], pool_size: int, seed: int) -> dict[str, Any]:
    """What a cached pool must match to be reused."""
    from align_chains import EMBEDDED_POLICY, EMBEDDED_REWARD

    return {
        "policy": EMBEDDED_POLICY,
        "reward": EMBEDDED_REWARD,
        "prompts": prompts,
        "pool_size": pool_size,
        "max_new_tokens": MAX_NEW_TOKENS,
        "temperature": TEMPERATURE,
        "seed": seed,
    }


def generate_pool(
    prompts: list[str], pool_size: int, chunk: int, seed: int
) -> tuple[list[list[float]], list[list[str]], float]:
    """Sample and score ``pool_size`` responses per prompt; returns rewards, texts and seconds."""
    from align_chains import Decoder, SamplingParams, load_policy, load_reward

    policy = load_policy()
    reward = load_reward()
    decoder = Decoder(policy)
    ids = [policy.render([{"role": "user", "content": p}]) for p in prompts]
    rewards: list[list[float]] = [[] for _ in prompts]
    texts: list[list[str]] = [[] for _ in prompts]
    generation_s = 0.0
    for start in range(0, len(prompts), chunk):
        stop = min(start + chunk, len(prompts))
        params = SamplingParams(
            max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, seed=seed * 1_000 + start
        )
        t0 = time.perf_counter()
        completions = decoder.generate(ids[start:stop], rows=pool_size, params=params)
        scores = reward.score(
            [prompts[start + c.prompt_index] for c in completions], [c.text for c in completions]
        )
        generation_s += time.perf_counter() - t0
        for c, s in zip(completions, scores, strict=True):
            rewards[start + c.prompt_index].append(s)
            texts[start + c.prompt_index].append(c.text)
        print(
            f"  prompts {start + 1}-{stop} of {len(prompts)}: {len(completions)} samples, "
            f"{generation_s:.0f} s so far",
            flush=True,
        )
    for i, r in enumerate(rewards):
        if len(r) != pool_size:
            raise RuntimeError(f"prompt {i} got {len(r)} samples, expected {pool_size}")
    return rewards, texts, generation_s


def load_or_build_pool(args: argparse.Namespace, prompts: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """The [prompts, pool] reward matrix, from the cache file when its settings match."""
    settings = pool_settings(prompts, args.pool, args.pool_seed)
    path: Path = args.pool_file
    if path.exists() and not args.regenerate:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("settings") == settings:
            print(f"pool: loaded {path} (generated earlier, not regenerated)")
            return np.asarray(cached["rewards"], dtype=float), cached
        print(f"pool: {path} was built with other settings; regenerating")
    n = len(prompts) * args.pool
    print(
        f"pool: sampling {args.pool} responses for each of {len(prompts)} prompts ({n} samples), "
        f"{args.chunk} prompts per decoder call"
    )
    rewards, texts, seconds = generate_pool(prompts, args.pool, args.chunk, args.pool_seed)
    cached = {
        "settings": settings,
        "generation_seconds": seconds,
        "num_samples": n,
        "machine": machine(),
        "rewards": rewards,
        "texts": texts,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cached, indent=1), encoding="utf-8")
    print(f"pool: wrote {path}")
    return np.asarray(rewards, dtype=float), cached


# -- simulation ----------------------------------------------------------------------------------
@dataclass
class BudgetResult:
    budget: int
    exploration: int  # d, samples per prompt in stage 1
    bwr: float
    bwr_ci: tuple[float, float]
    tie_rate: float  # fraction of batches where adaptive and uniform tie exactly
    survival: int | None  # smallest B' with BWR(adaptive@B vs uniform@B') <= 0.5; None: > pool
    mean_adaptive: float
    mean_uniform: float  # uniform@B
    mean_uniform_survival: float | None  # uniform@survival
    mean_max_extra: float  # mean over batches of max_i a_i
    bwr_by_uniform_budget: dict[int, float]
    # diagnostic: the same greedy rule on expected-max curves of the prompt's whole pool
    bwr_oracle: float
    bwr_oracle_ci: tuple[float, float]
    mean_adaptive_oracle: float


def win_scores(adaptive: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Per batch: 1 if adaptive wins, 1/2 on a tie, 0 if it loses."""
    return (adaptive > uniform) + 0.5 * (adaptive == uniform)


def bootstrap_ci(values: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean, resampling batches."""
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def pool_curve(pool_row: np.ndarray, best: float, horizon: int) -> np.ndarray:
    """V(0..horizon) = E[max(best, j draws)] with draws i.i.d. from the prompt's whole pool.

    Diagnostic only: it treats the pool as the prompt's true reward distribution, which
    ``allocate`` has to estimate from the d exploration rewards.
    """
    values = np.sort(pool_row)
    levels = np.arange(1, values.size + 1) / values.size
    cdf = levels[None, :] ** np.arange(1, horizon + 1)[:, None]  # P(max of j draws <= values[m])
    pmf = np.diff(cdf, axis=1, prepend=0.0)
    return np.concatenate([[best], pmf @ np.maximum(best, values)])


def simulate(
    pool: np.ndarray, budgets: list[int], k: int, batches: int, draws: int, seed: int, resamples: int
) -> tuple[list[BudgetResult], np.ndarray]:
    """Run every budget on the same random batches; also returns uniform@B' batch means (B' = 1..P)."""
    num_prompts, pool_size = pool.shape
    rng = np.random.default_rng(seed)
    alloc_rng = np.random.default_rng([seed, 1])
    boot_rng = np.random.default_rng([seed, 2])
    oracle_boot_rng = np.random.default_rng([seed, 3])
    # per-prompt best rewards; batch means are taken the same way for both (last axis), so
    # identical selections give bit-identical means and count as ties
    adaptive_best = {b: np.empty((batches, k)) for b in budgets}
    oracle_best = {b: np.empty((batches, k)) for b in budgets}
    max_extra = {b: np.empty(batches) for b in budgets}
    uniform_best = np.empty((batches, pool_size, k))  # [:, j]: uniform@(j + 1)
    for t in range(batches):
        chosen = rng.choice(num_prompts, size=k, replace=False)
        draws_kp = np.stack([pool[i, rng.permutation(pool_size)] for i in chosen])  # [K, P]
        # uniform@B' for every B' at once: running max along the permuted pool
        uniform_best[t] = np.maximum.accumulate(draws_kp, axis=1).T
        for b in budgets:
            d = exploration_size(b, EXPLORATION, k)
            extra = allocate([row[:d].tolist() for row in draws_kp], b, draws=draws, rng=alloc_rng)
            if sum(extra) != (b - d) * k or d + max(extra) > pool_size:
                raise RuntimeError(f"allocate returned {extra} for B={b}, d={d}, K={k}, P={pool_size}")
            adaptive_best[b][t] = [row[: d + a].max() for row, a in zip(draws_kp, extra, strict=True)]
            max_extra[b][t] = max(extra)
            best_d = [float(row[:d].max()) for row in draws_kp]
            curves = [pool_curve(pool[i], m, (b - d) * k) for i, m in zip(chosen, best_d, strict=True)]
            oracle = greedy_allocation(curves, (b - d) * k)
            if d + max(oracle) > pool_size:
                raise RuntimeError(f"oracle allocation {oracle} exceeds the pool for B={b}")
            oracle_best[b][t] = [row[: d + a].max() for row, a in zip(draws_kp, oracle, strict=True)]
    adaptive = {b: best.mean(axis=-1) for b, best in adaptive_best.items()}
    adaptive_oracle = {b: best.mean(axis=-1) for b, best in oracle_best.items()}
    uniform = uniform_best.mean(axis=-1)  # [batches, P], column j: uniform@(j + 1)
    results = []
    for b in budgets:
        wins = win_scores(adaptive[b], uniform[:, b - 1])
        by_budget = {
            bp: float(win_scores(adaptive[b], uniform[:, bp - 1]).mean()) for bp in range(b, pool_size + 1)
        }
        survival = next((bp for bp, w in by_budget.items() if w <= 0.5), None)
        oracle_wins = win_scores(adaptive_oracle[b], uniform[:, b - 1])
        results.append(
            BudgetResult(
                budget=b,
                exploration=exploration_size(b, EXPLORATION, k),
                bwr=float(wins.mean()),
                bwr_ci=bootstrap_ci(wins, resamples, boot_rng),
                tie_rate=float((adaptive[b] == uniform[:, b - 1]).mean()),
                survival=survival,
                mean_adaptive=float(adaptive[b].mean()),
                mean_uniform=float(uniform[:, b - 1].mean()),
                mean_uniform_survival=None if survival is None else float(uniform[:, survival - 1].mean()),
                mean_max_extra=float(max_extra[b].mean()),
                bwr_by_uniform_budget=by_budget,
                bwr_oracle=float(oracle_wins.mean()),
                bwr_oracle_ci=bootstrap_ci(oracle_wins, resamples, oracle_boot_rng),
                mean_adaptive_oracle=float(adaptive_oracle[b].mean()),
            )
        )
    return results, uniform.mean(axis=0)


# -- report ------------------------------------------------------------------------------------
def print_table(results: list[BudgetResult], pool_size: int, k: int) -> None:
    print()
    print(
        "| B | d | BWR adaptive@B vs uniform@B [95% CI] | ties | survival B' | "
        "mean adaptive@B | mean uniform@B | mean uniform@B' | mean max a_i |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        survival = f"> {pool_size}" if r.survival is None else str(r.survival)
        at_survival = "-" if r.mean_uniform_survival is None else f"{r.mean_uniform_survival:.4f}"
        print(
            f"| {r.budget} | {r.exploration} | {r.bwr:.3f} [{r.bwr_ci[0]:.3f}, {r.bwr_ci[1]:.3f}] | "
            f"{r.tie_rate:.3f} | {survival} | {r.mean_adaptive:.4f} | {r.mean_uniform:.4f} | "
            f"{at_survival} | {r.mean_max_extra:.2f} |"
        )
    print()
    for r in results:
        curve = ", ".join(f"{bp}: {w:.3f}" for bp, w in list(r.bwr_by_uniform_budget.items())[:12])
        print(f"BWR adaptive@{r.budget} vs uniform@B' (K={k}), first B': {curve}")
    print()
    print("Diagnostic: the same greedy rule (library greedy_allocation) on expected-max curves of each")
    print("prompt's whole pool (the pool taken as the true reward distribution) instead of the KDE of")
    print("its d exploration rewards; same batches, same exploration samples.")
    print("| B | BWR pool-curve adaptive@B vs uniform@B [95% CI] | mean pool-curve adaptive@B |")
    print("| ---: | --- | ---: |")
    for r in results:
        print(
            f"| {r.budget} | {r.bwr_oracle:.3f} [{r.bwr_oracle_ci[0]:.3f}, {r.bwr_oracle_ci[1]:.3f}] | "
            f"{r.mean_adaptive_oracle:.4f} |"
        )


def plot(results: list[BudgetResult], uniform_means: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2))
    budgets = [r.budget for r in results]
    bwr = np.array([r.bwr for r in results])
    err = np.array([[r.bwr - r.bwr_ci[0] for r in results], [r.bwr_ci[1] - r.bwr for r in results]])
    left.axhspan(*PAPER_MEDIAN_BWR, color="tab:green", alpha=0.15, label="paper median BWR 0.54-0.62")
    left.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="0.5 (no gain)")
    left.errorbar(
        budgets,
        bwr,
        yerr=err,
        marker="o",
        capsize=4,
        color="tab:blue",
        label="adaptive@B vs uniform@B (95% CI)",
    )
    left.plot(
        budgets,
        [r.bwr_oracle for r in results],
        marker="s",
        markerfacecolor="none",
        linestyle=":",
        color="tab:grey",
        label="diagnostic: greedy on true pool curves",
    )
    left.set_xscale("log", base=2)
    left.set_xticks(budgets, [str(b) for b in budgets])
    left.set_xlabel("average budget B (samples per prompt)")
    left.set_ylabel("batch win rate")
    lows = [r.bwr_ci[0] for r in results] + [r.bwr_oracle for r in results]
    highs = [r.bwr_ci[1] for r in results] + [r.bwr_oracle for r in results]
    left.set_ylim(min(0.3, min(lows) - 0.05), max(0.9, max(highs) + 0.05))
    left.set_title("Batch win rate at equal total budget")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)

    x = np.arange(1, uniform_means.size + 1)
    right.plot(x, uniform_means, color="tab:orange", label="uniform@B'")
    right.plot(budgets, [r.mean_adaptive for r in results], "o", color="tab:blue", label="adaptive@B")
    for r in results:
        if r.survival is not None:
            right.annotate(
                f"B={r.budget}: survival {r.survival}",
                (r.survival, r.mean_adaptive),
                xytext=(6, -12),
                textcoords="offset points",
                fontsize=8,
            )
            right.plot([r.budget, r.survival], [r.mean_adaptive] * 2, ":", color="tab:blue", linewidth=1)
    right.set_xlabel("samples per prompt (uniform B' / adaptive average B)")
    right.set_ylabel("mean batch reward (mean over batches)")
    right.set_title("Mean batch reward vs budget")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="one prompt per line")
    parser.add_argument("--pool", type=int, default=32, help="responses sampled per prompt (P)")
    parser.add_argument("--pool-file", type=Path, default=DEFAULT_POOL_FILE, help="pool cache (JSON)")
    parser.add_argument("--regenerate", action="store_true", help="resample the pool even if cached")
    parser.add_argument("--chunk", type=int, default=4, help="prompts per decoder call")
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16], help="average budgets B")
    parser.add_argument("--k", type=int, default=5, help="prompts per batch (K)")
    parser.add_argument("--batches", type=int, default=2000, help="simulated batches")
    parser.add_argument("--draws", type=int, default=1024, help="Monte Carlo draws in allocate()")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CI")
    parser.add_argument(
        "--pool-seed", type=int, default=0, help="seeds pool sampling (part of the cache key)"
    )
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="output PNG")
    add_common_options(
        parser,
        seed_help="seeds the simulated batches and allocate()",
        json_help="also write the results as JSON",
    )
    args = parser.parse_args()
    if args.pool < 2 or args.k < 2 or args.batches < 1 or args.chunk < 1:
        parser.error("need --pool >= 2, --k >= 2, --batches >= 1, --chunk >= 1")
    return args


def main() -> None:
    args = parse_args()
    prompts = read_prompts(args.prompts)
    if len(prompts) < args.k:
        raise SystemExit(f"{args.prompts} has {len(prompts)} prompts, fewer than K={args.k}")
    pool, cached = load_or_build_pool(args, prompts)
    print(
        f"pool: {cached['num_samples']} samples ({len(prompts)} prompts x {args.pool}), "
        f"generation + scoring time {cached['generation_seconds']:.1f} s"
    )
    print(
        f"pool rewards: mean {pool.mean():.4f}, mean within-prompt std {pool.std(axis=1).mean():.4f}, "
        f"mean within-prompt range {np.ptp(pool, axis=1).mean():.4f}, "
        f"mean within-prompt skewness {skew(pool, axis=1).mean():+.2f} "
        f"({int((skew(pool, axis=1) < 0).sum())} of {len(prompts)} prompts left-skewed)"
    )

    budgets = []
    for b in sorted(set(args.budgets)):
        d = exploration_size(b, EXPLORATION, args.k)
        worst = d + (b - d) * args.k
        if b < 1 or worst > args.pool:
            print(
                f"skipping B={b}: d={d} plus all {(b - d) * args.k} extra samples on one prompt needs "
                f"{worst} pool entries, more than the pool's {args.pool}"
            )
            continue
        budgets.append(b)
    if not budgets:
        raise SystemExit("no budget fits in the pool; raise --pool")

    t0 = time.perf_counter()
    results, uniform_means = simulate(
        pool, budgets, args.k, args.batches, args.draws, args.seed, args.bootstrap
    )
    print(
        f"simulation: {args.batches} batches of K={args.k} prompts, budgets {budgets}, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    print(
        "CI: 95% percentile bootstrap over batches "
        f"({args.bootstrap} resamples); ties count 1/2; survival searched up to B'={args.pool}"
    )
    print_table(results, args.pool, args.k)

    title = (
        f"SmolLM2-135M-Instruct + MiniLM reward, {len(prompts)} prompts, pool P={args.pool}, "
        f"K={args.k}, {args.batches} batches, seed {args.seed}, pool seed {args.pool_seed}"
    )
    plot(results, uniform_means, args.plot, title)
    print(f"\nplot: {args.plot}")
    if args.json is not None:
        payload = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "generation_seconds": cached["generation_seconds"],
            "num_samples": cached["num_samples"],
            "results": [asdict(r) for r in results],
            "uniform_mean_by_budget": uniform_means.tolist(),
        }
        write_json(args.json, payload, indent=1)


if __name__ == "__main__":
    main()
