"""How much does a family's prefix rule tell early rejection? (dev split only; docs/task_map.md).

    python benchmarks/prefix_signal.py --families keywords avoidance --instances 4 --samples 32

samples ``--samples`` full answers per dev instance (one prefill, the map's 32 tokens and
temperature 0.7), then replays early rejection (n=8, α=0.5, a decision every 8 tokens: the
map's 4x setting) on random subsets of those answers. Rows of early rejection are independent
samples until a decision drops them, so the replay has the strategy's own distribution, and
it costs no model call: each variant (how the prefix scores rank, how ties are broken) is
judged on the same answers. Per instance it reports the success of the replayed strategy,
of Best-of-4 on the same subsets, and how often the first decision's cut fell inside a tie
(the kept rows chosen by row order, not by the reward). Results JSON: ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import machine

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Decoder
from align_chains.engine.sampling import SamplingParams, make_generator
from align_chains.models.policy import load_policy
from align_chains.tasks import FAMILIES, instances

Row = dict[str, Any]  # per sampled answer: final reward, success, prefix scores per step, logprobs
Rank = Callable[[Row, int], tuple]
Replay = tuple[Row, int, bool]


def sample_rows(policy: Any, family: str, line: dict[str, Any], args: argparse.Namespace) -> list[Row]:
    """``args.samples`` answers of one instance with their prefix scores at every decision step."""
    task, params = FAMILIES[family], {k: v for k, v in line["reward"].items() if k != "family"}
    decoder = Decoder(policy, ComputeCounters())
    sampling = SamplingParams(max_new_tokens=args.max_tokens, seed=args.seed)
    ids = policy.render([{"role": "user", "content": line["prompt"]}])
    batch = decoder.start([ids], args.samples, sampling)
    decoder.extend(batch, None, make_generator(args.seed, policy.device))
    rows = []
    for c in decoder.completions(batch):
        prefix = {}
        for step in range(args.every, args.max_tokens, args.every):
            ended = c.finish_reason == "stop" and c.generated_tokens <= step
            text = c.text if ended else policy.decode(c.token_ids[:step])
            prefix[step] = task.prefix(params, text, 0 if ended else args.max_tokens - step)
        rows.append(
            {
                "text": c.text,
                "tokens": c.generated_tokens,
                "reward": task.reward(params, c.text),
                "success": task.success(params, c.text),
                "prefix": prefix,
                "logprob": sum(c.logprobs[: args.every]) / max(1, min(args.every, len(c.logprobs))),
            }
        )
    return rows


def replay(rows: list[Row], rank: Rank, every: int, max_tokens: int, ties: str = "order") -> Replay:
    """Early rejection (keep half at every decision) on ``rows``: (chosen row, tokens, first cut tied).

    ``ties="keep"``: a row tied with the last kept row is kept too (only rows the prefix rule
    scores strictly lower are dropped), so a decision the rule cannot make drops nothing.
    """
    alive, pool, tied, spent = list(rows), [], None, 0
    for step in range(every, max_tokens, every):
        pool += [r for r in alive if r["tokens"] <= step]
        alive = [r for r in alive if r["tokens"] > step]
        scored = alive + [r for r in pool if step - every < r["tokens"] <= step]  # ended since the last
        if len(scored) <= 1:
            continue
        order = sorted(scored, key=lambda r: rank(r, step), reverse=True)
        keep = max(1, round(0.5 * len(order)))
        cut = order[keep - 1]["prefix"][step]
        if tied is None:
            tied = cut == order[keep]["prefix"][step]
        kept = {id(r) for r in order[:keep]}
        if ties == "keep":
            kept |= {id(r) for r in order[keep:] if r["prefix"][step] == cut}
        spent += sum(step for r in alive if id(r) not in kept)
        alive = [r for r in alive if id(r) in kept]
    pool += alive
    spent += sum(r["tokens"] for r in pool)
    return max(pool, key=lambda r: r["reward"]), spent, bool(tied)


RANKS: dict[str, Rank] = {
    "row order (as shipped)": lambda r, s: (r["prefix"][s], -r["index"]),
    "ties by policy log-prob": lambda r, s: (r["prefix"][s], r["logprob"]),
    "oracle (final reward)": lambda r, s: (r["reward"], -r["index"]),
}
# (label, rows started, rank, ties, decision interval)
VARIANTS = [
    *((f"n=8, {name}", 8, rank, "order", 8) for name, rank in RANKS.items()),
    ("n=8, keep ties", 8, RANKS["row order (as shipped)"], "keep", 8),
    ("n=6, keep ties", 6, RANKS["row order (as shipped)"], "keep", 8),
    ("n=5, keep ties", 5, RANKS["row order (as shipped)"], "keep", 8),
    ("n=5, every 16", 5, RANKS["row order (as shipped)"], "order", 16),
]


def evaluate_instance(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    """Success and tokens of each variant and of Best-of-k over ``args.trials`` random subsets."""
    rng = random.Random(args.seed)
    for i, row in enumerate(rows):
        row["index"] = i
    wins: dict[str, list[float]] = {}
    tokens: dict[str, list[float]] = {}
    ties = []
    for _ in range(args.trials):
        for label, n, rank, tie_rule, every in VARIANTS:
            subset = sorted(rng.sample(rows, n), key=lambda r: r["index"])
            chosen, spent, tied = replay(subset, rank, every, args.max_tokens, tie_rule)
            wins.setdefault(label, []).append(chosen["success"])
            tokens.setdefault(label, []).append(spent)
            if label == "n=8, row order (as shipped)":
                ties.append(tied)
        for k in (4, 5, 6, 8):
            subset = rng.sample(rows, k)
            wins.setdefault(f"best-of-{k}", []).append(max(subset, key=lambda r: r["reward"])["success"])
            tokens.setdefault(f"best-of-{k}", []).append(sum(r["tokens"] for r in subset))
    out: dict[str, Any] = {
        label: {"success": statistics.fmean(v), "tokens": statistics.fmean(tokens[label])}
        for label, v in wins.items()
    }
    out["first cut tied"] = statistics.fmean(ties)
    out["plain success"] = statistics.fmean(r["success"] for r in rows)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=["keywords", "avoidance"], choices=list(FAMILIES))
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/task_map/prefix_signal_dev.json"))
    parser.add_argument("--replay", type=Path, help="replay the answers of an earlier --out (no sampling)")
    args = parser.parse_args(argv)
    earlier = json.loads(args.replay.read_text()) if args.replay else None
    policy = None if earlier else load_policy()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results: dict[str, Any] = {"machine": machine(), "split": "dev", "args": settings}
    for family in args.families:
        per = []
        for i, line in enumerate(instances(family, "dev", args.instances)):
            if earlier:
                rows = earlier[family]["instances"][i]["answers"]
                for row in rows:
                    row["prefix"] = {int(step): value for step, value in row["prefix"].items()}
            else:
                rows = sample_rows(policy, family, line, args)
            summary = evaluate_instance(rows, args)
            per.append({"id": line["id"], **summary, "answers": rows})
        mean = {
            label: {
                key: round(statistics.fmean(p[label][key] for p in per), 3) for key in ("success", "tokens")
            }
            for label in per[0]
            if isinstance(per[0][label], dict)
        }
        for key in ("first cut tied", "plain success"):
            mean[key] = round(statistics.fmean(p[key] for p in per), 3)
        print(family, json.dumps(mean, indent=1), flush=True)
        results[family] = {"mean": mean, "instances": per}
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
