"""Early-rejection Best-of-N against Best-of-32, side by side, on the starter prompt set.

One process, models loaded once (never timed). For every prompt of
``align_chains/evaluation/prompts/starter.jsonl`` (written before any result was seen), the ways
run back to back on the same seed, interleaved prompt by prompt so machine noise hits all alike:

- ``best-of-32``: ``BestOfN(n=32)``;
- ``early-rejection``: ``EarlyRejectionBestOfN(n=32, rejection=α, decision_every=m)`` for each
  ``--settings α/m`` pair (the first pair is the pre-registered one; others are reported as well).

Every way selects with the same optimised reward (``--reward``, default the embedded policy as
judge) and every chosen answer is re-scored with a held-out reward it never saw (``--holdout``,
default the MiniLM embedding reward). Reported per way: mean optimised and held-out reward, win
rate against Best-of-32 on the optimised reward (ties count half), mean generated tokens (every
sampled token, rejected rows included), reward calls/items and seconds per prompt, and the
ratios of generated tokens and of median seconds against Best-of-32.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_early_rejection.py --json bench-results/early_rejection.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from common import add_common_options, machine, machine_line, markdown_table, ratio, win_rate, write_json

from align_chains import BestOfN, SamplingParams, load_policy, load_reward
from align_chains.evaluation.prompts import STARTER_PROMPTS, load_prompts
from align_chains.strategies import EarlyRejectionBestOfN


def parse_setting(text: str) -> tuple[float, int | str]:
    alpha, _, every = text.partition("/")
    return float(alpha), (every if every == "memory" else int(every))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=Path, default=STARTER_PROMPTS)
    parser.add_argument("--limit", type=int, help="Only the first LIMIT prompts.")
    parser.add_argument("--reward", default="judge")
    parser.add_argument("--holdout", default="minilm")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument(
        "--settings", nargs="+", default=["0.75/8", "0.5/4"], help="rejection/decision_every pairs."
    )
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    add_common_options(parser, seed_help="prompt i samples with seed + i, every way alike")
    return parser


def run_prompt(
    ways: dict[str, Any], prompt: Any, models: tuple[Any, Any, Any], params: Any
) -> dict[str, Any]:
    """Every way on one prompt, back to back on one seed: way -> its row."""
    policy, reward, holdout = models
    rows = {}
    for name, strategy in ways.items():
        result = strategy.run(prompt.messages, policy, reward, params)
        (held,) = holdout.score([prompt.messages], [result.text])
        c = result.counters
        rows[name] = {
            "prompt": prompt.id,
            "reward": result.reward,
            "holdout": held,
            "generated_tokens": c.generated_tokens,
            "forward_passes": c.forward_passes,
            "reward_calls": c.reward_calls,
            "reward_items": c.reward_items,
            "seconds": c.seconds,
            "text": result.text,
        }
    return rows


def summarize(rows: dict[str, list[dict[str, Any]]], base_name: str) -> dict[str, dict[str, float]]:
    """Means and medians per way, and ratios against the base way (Best-of-n)."""
    base = rows[base_name]
    summary = {}
    for name, runs in rows.items():
        summary[name] = {
            "mean_reward": statistics.fmean(r["reward"] for r in runs),
            "mean_holdout": statistics.fmean(r["holdout"] for r in runs),
            "win_rate_vs_base": win_rate([r["reward"] for r in runs], [b["reward"] for b in base]),
            "mean_generated_tokens": statistics.fmean(r["generated_tokens"] for r in runs),
            "mean_reward_calls": statistics.fmean(r["reward_calls"] for r in runs),
            "mean_reward_items": statistics.fmean(r["reward_items"] for r in runs),
            "median_seconds": statistics.median(r["seconds"] for r in runs),
            "mean_seconds": statistics.fmean(r["seconds"] for r in runs),
        }
    for name, s in summary.items():
        s["tokens_ratio"] = ratio(s["mean_generated_tokens"], summary[base_name]["mean_generated_tokens"])
        s["median_seconds_ratio"] = ratio(s["median_seconds"], summary[base_name]["median_seconds"])
        s["median_per_prompt_seconds_ratio"] = statistics.median(
            r["seconds"] / b["seconds"] for r, b in zip(rows[name], base, strict=True)
        )
    return summary


def main() -> None:
    args = build_parser().parse_args()
    prompts = load_prompts(args.prompts)[: args.limit]
    policy = load_policy()
    models = (policy, load_reward(args.reward, policy=policy), load_reward(args.holdout, policy=policy))
    ways: dict[str, Any] = {f"best-of-{args.n}": BestOfN(n=args.n)}
    for text in args.settings:
        alpha, every = parse_setting(text)
        ways[f"early-rejection a={alpha} m={every}"] = EarlyRejectionBestOfN(
            n=args.n, rejection=alpha, decision_every=every
        )
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature)

    warm = params.model_copy(update={"seed": 12345, "max_new_tokens": 8})
    for strategy in ways.values():  # short warm-up (untimed): allocator, kernels, first reward call
        strategy.run(prompts[0].messages, policy, models[1], warm)

    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    for i, prompt in enumerate(prompts):
        for name, row in run_prompt(
            ways, prompt, models, params.model_copy(update={"seed": args.seed + i})
        ).items():
            rows[name].append(row)
            print(
                f"[{i + 1}/{len(prompts)}] {prompt.id:24s} {name:34s} reward {row['reward']:7.3f} "
                f"holdout {row['holdout']:6.3f} tokens {row['generated_tokens']:5d} {row['seconds']:6.2f} s",
                flush=True,
            )
    summary = summarize(rows, f"best-of-{args.n}")
    env = machine()
    print(
        f"\n{len(prompts)} prompts, max_tokens={args.max_tokens}, reward={args.reward}, "
        f"holdout={args.holdout}\n{machine_line(env)}"
    )
    header = ["way", "mean reward", "mean held-out", "win vs base", "gen tokens", "× base", "reward calls",
              "median s", "× base"]  # fmt: skip
    print(markdown_table(header, (
        [name, f"{s['mean_reward']:.3f}", f"{s['mean_holdout']:.3f}", f"{s['win_rate_vs_base']:.2f}",
         f"{s['mean_generated_tokens']:.0f}", f"{s['tokens_ratio']:.2f}", f"{s['mean_reward_calls']:.1f}",
         f"{s['median_seconds']:.2f}", f"{s['median_seconds_ratio']:.2f}"]
        for name, s in summary.items()
    ), align="---:"))  # fmt: skip
    settings = vars(args) | {"prompts": str(args.prompts), "json": str(args.json)}
    write_json(args.json, {"settings": settings, "machine": env, "summary": summary, "runs": rows})


if __name__ == "__main__":
    main()
