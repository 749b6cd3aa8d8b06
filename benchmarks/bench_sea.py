"""SEA on the embedded default: time per iteration, and reward against Best-of-N at equal wall-clock.

One process, models loaded once (loading is never timed). On ``--prompts`` prompts from
``benchmarks/data/adaptive_eval_prompts.txt`` (held out from any tuning):

1. SEA runs on all prompts in one batch (every chain of every prompt is a row of the same
   tensors). Its wall-clock T, the time per iteration (optimisation loop only, from the
   per-iteration timestamps in the trace) and its work counters are recorded.
2. Best-of-N runs on the same prompts, in one batch, with N = 1, 2, 4, ... until a run takes
   longer than T. "BoN at equal wall-clock" is the largest N whose run took at most T; the
   next N (which took longer than SEA) is reported too.

Both are scored by the same reward (the one SEA optimises; Best-of-N selects with it too).
The report gives per-prompt rewards, the mean, SEA's win rate against each BoN, and medians.

Run from the repository root::

    python benchmarks/bench_sea.py --reward judge --prompts 10 --json bench-results/sea_judge.json
    python benchmarks/bench_sea.py --reward minilm --prompts 10
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from common import add_common_options, machine, machine_line, timed, win_rate, write_json

from align_chains import SEA, BestOfN, SamplingParams, load_policy, load_reward

PROMPTS = Path(__file__).parent / "data" / "adaptive_eval_prompts.txt"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reward", default="judge", help="'judge' (exact path) or 'minilm' (bridge).")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-n", type=int, default=64)
    add_common_options(parser)
    parser.add_argument("--plot", type=Path, help="Save a plot of prompt 0's trace (needs matplotlib).")
    return parser


def best_of_n_until(
    prompts: list[str], policy: Any, reward: Any, params: Any, seconds: float, max_n: int
) -> dict:
    """Best-of-N with N = 1, 2, 4, ... until a run takes longer than ``seconds``: N -> its run."""
    bon: dict[int, dict[str, Any]] = {}
    n = 1
    while n <= max_n:
        out, took = timed(lambda n=n: BestOfN(n=n).run_batch(prompts, policy, reward, params))
        bon[n] = {"seconds": took, "rewards": [r.reward for r in out]}
        print(f"BoN-{n}: {took:.1f} s, mean reward {statistics.fmean(bon[n]['rewards']):.4f}")
        if took > seconds:
            break
        n *= 2
    return bon


def build_report(
    args: argparse.Namespace, results: list[Any], sea_seconds: float, bon: dict
) -> dict[str, Any]:
    sea_rewards = [r.reward for r in results]
    within = [k for k, v in bon.items() if v["seconds"] <= sea_seconds]
    above = [k for k, v in bon.items() if v["seconds"] > sea_seconds]
    return {
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sea": {
            "seconds": sea_seconds,
            "seconds_per_iteration": results[0].details.get("seconds_per_iteration"),
            "rewards": sea_rewards,
            "mean_reward": statistics.fmean(sea_rewards),
            "median_reward": statistics.median(sea_rewards),
            "details": {k: v for k, v in results[0].details.items() if k != "iterations_per_chain"},
            "counters": results[0].counters.as_dict(),
        },
        "best_of_n": {
            str(k): {
                **v,
                "mean_reward": statistics.fmean(v["rewards"]),
                "median_reward": statistics.median(v["rewards"]),
                "sea_win_rate": win_rate(sea_rewards, v["rewards"]),
            }
            for k, v in bon.items()
        },
        "equal_wall_clock_n": max(within) if within else min(bon),
        "next_n_slower_than_sea": min(above) if above else None,
        "trace_prompt_0": [{k: v for k, v in t.items() if k != "text"} for t in results[0].trace],
    }


def main() -> None:
    args = build_parser().parse_args()
    prompts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()][: args.prompts]
    policy = load_policy()
    reward = load_reward(args.reward, policy=policy)
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=0.8, seed=args.seed)
    sea = SEA(chains=args.chains, iterations=args.iterations, patience=None)

    # warm-up (untimed): allocator, kernels, the reward's first call
    SEA(chains=1, iterations=1).run(
        prompts[0], policy, reward, params.model_copy(update={"max_new_tokens": 4})
    )
    results, sea_seconds = timed(lambda: sea.run_batch(prompts, policy, reward, params))
    per_iteration = results[0].details.get("seconds_per_iteration")
    print(f"SEA: {sea_seconds:.1f} s for {len(prompts)} prompts, {per_iteration:.2f} s per iteration")
    print(
        f"     mean reward {statistics.fmean(r.reward for r in results):.4f}; "
        f"counters {results[0].counters.as_dict()}"
    )
    bon = best_of_n_until(prompts, policy, reward, params, sea_seconds, args.max_n)
    report = build_report(args, results, sea_seconds, bon)
    equal_n = report["equal_wall_clock_n"]
    eq = report["best_of_n"][str(equal_n)]
    print(
        f"\nAt equal wall-clock (BoN-{equal_n}, {eq['seconds']:.1f} s vs SEA {sea_seconds:.1f} s): "
        f"mean reward SEA {report['sea']['mean_reward']:.4f} vs BoN {eq['mean_reward']:.4f}; "
        f"SEA wins {eq['sea_win_rate']:.2f} of prompts\n{machine_line(report['machine'])}"
    )
    write_json(args.json, report)
    if args.plot:
        plot_trace(results[0].trace, args.plot, title=f"SEA on {prompts[0]!r} ({args.reward} reward)")


def plot_trace(trace: list[dict[str, Any]], path: Path, title: str) -> None:
    """Soft and hard reward per iteration for each chain of one prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for chain in sorted({t["chain"] for t in trace}):
        rows = [t for t in trace if t["chain"] == chain and t["iteration"] > 0]
        its = [t["iteration"] for t in rows]
        (line,) = ax.plot(its, [t["soft_reward"] for t in rows], label=f"chain {chain}: soft")
        ax.plot(
            its, [t["hard_reward"] for t in rows], "--", color=line.get_color(), label=f"chain {chain}: hard"
        )
        start = next(t["hard_reward"] for t in trace if t["chain"] == chain and t["iteration"] == 0)
        ax.scatter([0], [start], color=line.get_color())
    ax.set_xlabel("iteration (0 = the policy's sample)")
    ax.set_ylabel("reward")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
