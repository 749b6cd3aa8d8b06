"""Before/after fidelity comparison against Best-of-N at equal compute, on the EVAL prompts.

Prompts: ``benchmarks/data/fidelity_eval_prompts.txt`` (14, written before any run and never used
to choose a setting; ``tune_fidelity.py`` tunes on the separate dev set). Embedded SmolLM2-135M-
Instruct on the CPU, one torch thread, models loaded once, one process, an untimed warm-up.

Each *family* is a method before and after a fidelity change, plus Best-of-N on the same prompts
selecting with the reward the method optimises:

- ``sea``: SEA as a new user runs it (judge reward with its default principle, chains=2,
  iterations=10, patience=10, T=0.8, revise on) with the fluency guard off (before) and on
  (after, the default);
- ``ivg``: IVG in principle mode (token guidance + chunk-level implicit value, W=2, K=2, L=30,
  T=0.7, top-k 50) at the old default w = 1 (before: the principled prompt and nothing more)
  and at the new principle-mode default (after).

**Equal compute.** The machine is shared (2 cores, other jobs running), so wall-clock seconds
swing with the load; with one torch thread, the process's CPU seconds swing much less. Best-of-N
runs with several N; "BoN at equal compute" for a method is the largest N whose CPU time is at
most the method's. Wall seconds, generated tokens and forward passes are saved beside it.

**Signals.** For every answer: the reward the method optimised; held-out signals it did not
optimise: the MiniLM embedding reward (cosine of answer and question: is it about what was
asked?) and, for IVG, the policy-as-judge's verdict on the guiding principle; fluency: the
policy's perplexity of the answer under the plain prompt and the share of repeated token
3-grams. Means and medians over prompts, and per-prompt win rates against BoN.

Each method and each Best-of-N runs as its own job (``run``; its answers and CPU seconds go to
a JSON file), so a shared machine can run them one after another and a crash loses one job;
``report`` scores every saved answer and prints one table per family, and the per-prompt win
rate of the after row against the before row.

Adding a family (DARWIN before/after, say): write a function returning a ``Family`` (its rows,
which row is before and which after, the optimised reward, sampling settings, extra held-out
signals) and register it in ``FAMILIES``; jobs, the Best-of-N ladder and the report are shared.

    export OMP_NUM_THREADS=1
    for row in no-guard guard bon-4 bon-8 bon-16; do
        python benchmarks/compare_fidelity.py run sea $row --prompts 8 --json out/sea_$row.json
    done
    for row in w=1 w=2 bon-2 bon-4 bon-8; do
        python benchmarks/compare_fidelity.py run ivg $row --prompts 6 --json out/ivg_$row.json
    done
    python benchmarks/compare_fidelity.py report out/*.json --json out/report.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import add_common_options, machine, win_rate, write_json
from fidelity_common import EVAL_PROMPTS, IVG_PRINCIPLE, fluency, read_prompts, summary

from align_chains import SEA, BestOfN, SamplingParams, ValueGuided, load_policy, load_reward
from align_chains.models.policy import Policy
from align_chains.rewards import ImplicitReward, RewardModel
from align_chains.strategies.base import Strategy


@dataclass
class Family:
    """A method before and after a fidelity change, and what it is measured with."""

    name: str
    rows: dict[str, Callable[[], Strategy]]  # row key -> the strategy ("bon-N" rows are shared)
    before: str
    after: str
    reward: RewardModel  # what the methods optimise; Best-of-N selects with it too
    params: SamplingParams
    held_out: dict[str, RewardModel] = field(default_factory=dict)
    # True when every row's own reported reward is the optimised reward of the returned text
    # (SEA and Best-of-N with the judge): the report then does not score it again
    reported_reward_is_optimised: bool = False


def sea_family(policy: Policy, args: argparse.Namespace) -> Family:
    settings = {"chains": 2, "iterations": 10, "patience": 10}
    return Family(
        name="sea",
        rows={
            "no-guard": lambda: SEA(**settings, fluency_guard=False),
            "guard": lambda: SEA(**settings),
        },
        before="no-guard",
        after="guard",
        reward=load_reward("judge", policy=policy),
        params=SamplingParams(max_new_tokens=args.sea_tokens, temperature=0.8, seed=args.seed),
        reported_reward_is_optimised=True,
    )


def ivg_family(policy: Policy, args: argparse.Namespace) -> Family:
    default = ValueGuided(principle=IVG_PRINCIPLE).guidance_scale(None)
    scales = sorted({1.0, 1.5, 2.0, 3.0, default})
    return Family(
        name="ivg",
        rows={f"w={w:g}": (lambda w=w: ValueGuided(principle=IVG_PRINCIPLE, w=w)) for w in scales},
        before="w=1",
        after=f"w={default:g}",
        reward=ImplicitReward(policy, principle=IVG_PRINCIPLE),
        params=SamplingParams(max_new_tokens=args.ivg_tokens, temperature=0.7, top_k=50, seed=args.seed),
        held_out={"judge: principle": load_reward("judge", policy=policy, principle=IVG_PRINCIPLE)},
    )


FAMILIES: dict[str, Callable[[Policy, argparse.Namespace], Family]] = {"sea": sea_family, "ivg": ivg_family}


def strategy_of(family: Family, row: str) -> Strategy:
    if row.startswith("bon-"):
        return BestOfN(n=int(row[4:]))
    if row not in family.rows:
        raise SystemExit(f"unknown row {row!r} for {family.name}: {[*family.rows, 'bon-N']}")
    return family.rows[row]()


def run_job(args: argparse.Namespace) -> None:
    """One method (or one Best-of-N) on the eval prompts, timed; answers saved for ``report``."""
    prompts = read_prompts(EVAL_PROMPTS, args.prompts)
    policy = load_policy()
    family = FAMILIES[args.family](policy, args)
    strategy = strategy_of(family, args.row)
    # warm-up (untimed): kernels, allocator, the reward's first call
    BestOfN(n=1).run(
        prompts[0], policy, family.reward, family.params.model_copy(update={"max_new_tokens": 4})
    )
    wall, cpu = time.perf_counter(), time.process_time()
    results = strategy.run_batch(prompts, policy, family.reward, family.params)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    counters = [r.counters for r in results]
    job = {
        "family": family.name,
        "row": args.row,
        "prompts": prompts,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        # SEA reports one batch-wide counter to every prompt; the others split tokens per prompt
        "generated_tokens": (
            counters[0].generated_tokens
            if all(c == counters[0] for c in counters)
            else sum(c.generated_tokens for c in counters)
        ),
        "forward_passes": counters[0].forward_passes,
        "answers": [r.text for r in results],
        "strategy_rewards": [r.reward for r in results],
        "flags": [r.flags for r in results],
        "details": [
            {k: v for k, v in r.details.items() if k in ("fluency_guard", "w", "iterations")} for r in results
        ],
        "chosen": [r.best.meta for r in results],
    }
    print(f"[{family.name}] {args.row}: cpu {cpu:.0f} s, wall {wall:.0f} s", flush=True)
    write_json(args.json, job)


def measure(job: dict[str, Any], policy: Policy, family: Family, minilm: RewardModel) -> None:
    """The optimised reward, the held-out signals and fluency of every answer of one job."""
    prompts, answers = job["prompts"], job["answers"]
    if family.reported_reward_is_optimised:
        job["optimised"] = job["strategy_rewards"]
    else:
        job["optimised"] = family.reward.score(prompts, answers)
    job["held_out"] = {"minilm relevance": minilm.score(prompts, answers)}
    for name, reward in family.held_out.items():
        job["held_out"][name] = reward.score(prompts, answers)
    job.update(fluency(policy, prompts, answers))


def report(args: argparse.Namespace) -> None:
    """Merge the jobs' files, score every answer, match each method with BoN at equal CPU time."""
    jobs = [json.loads(Path(f).read_text()) for f in args.files]
    policy = load_policy()
    minilm = load_reward("minilm")
    out: dict[str, Any] = {}
    for name in dict.fromkeys(j["family"] for j in jobs):
        family = FAMILIES[name](policy, argparse.Namespace(**jobs[0]["settings"]))
        mine = {j["row"]: j for j in jobs if j["family"] == name}
        for job in mine.values():
            measure(job, policy, family, minilm)
        bon = {int(k[4:]): v for k, v in mine.items() if k.startswith("bon-")}
        for key, job in mine.items():
            if key.startswith("bon-"):
                continue
            within = [n for n, b in bon.items() if b["cpu_seconds"] <= job["cpu_seconds"]]
            job["equal_compute_n"] = max(within) if within else None
            if within:
                b = bon[max(within)]
                job["win_rate_vs_bon"] = {
                    "optimised": win_rate(job["optimised"], b["optimised"]),
                    **{k: win_rate(v, b["held_out"][k]) for k, v in job["held_out"].items()},
                }
        if family.before in mine and family.after in mine:
            a, b = mine[family.after], mine[family.before]
            mine[family.after]["win_rate_vs_before"] = {
                "optimised": win_rate(a["optimised"], b["optimised"]),
                **{k: win_rate(v, b["held_out"][k]) for k, v in a["held_out"].items()},
                # lower is better: the share of prompts where the after answer is the more fluent
                "lower perplexity": win_rate(
                    [-(x or math.inf) for x in a["perplexity"]], [-(x or math.inf) for x in b["perplexity"]]
                ),
            }
        out[name] = {"before": family.before, "after": family.after, "jobs": mine}
        print(table(name, family, mine), flush=True)
        if "win_rate_vs_before" in mine.get(family.after, {}):
            wins = ", ".join(f"{k} {v:.2f}" for k, v in mine[family.after]["win_rate_vs_before"].items())
            print(f"\n{family.after} vs {family.before}, per-prompt win rate: {wins}", flush=True)
    write_json(args.json, out)


def table(name: str, family: Family, jobs: dict[str, Any]) -> str:
    """A markdown table of one family: means (median perplexity), win rates against BoN."""
    order = sorted(jobs, key=lambda k: (k.startswith("bon-"), int(k[4:]) if k.startswith("bon-") else 0, k))
    held = list(next(iter(jobs.values()))["held_out"])
    head = [
        "method",
        "CPU s",
        "wall s",
        "optimised",
        *held,
        "ppl (median)",
        "rep-3",
        "tokens",
        "vs BoN at equal CPU",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key in order:
        r = jobs[key]
        label = {family.before: f"{key} (before)", family.after: f"{key} (after)"}.get(key, key)
        cells = [
            label,
            f"{r['cpu_seconds']:.0f}",
            f"{r['wall_seconds']:.0f}",
            f"{summary(r['optimised'])['mean']:+.3f}",
            *(f"{summary(r['held_out'][h])['mean']:+.3f}" for h in held),
            f"{summary(r['perplexity'])['median']:.2f}",
            f"{summary(r['repetition'])['mean']:.3f}",
            f"{summary(r['tokens'])['mean']:.0f}",
        ]
        if r.get("equal_compute_n") is not None:
            wins = ", ".join(f"{k} {v:.2f}" for k, v in r["win_rate_vs_bon"].items())
            cells.append(f"BoN-{r['equal_compute_n']}; wins: {wins}")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return f"### {name}\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="Run one method or one Best-of-N and save its answers.")
    run.add_argument("family", choices=list(FAMILIES))
    run.add_argument("row", help="A row of the family (e.g. guard, no-guard, w=2) or bon-N.")
    run.add_argument("--prompts", type=int, default=None, help="Only the first N eval prompts.")
    run.add_argument("--sea-tokens", type=int, default=32)
    run.add_argument("--ivg-tokens", type=int, default=64)
    add_common_options(run)
    rep = sub.add_parser("report", help="Score the saved answers and print the tables.")
    rep.add_argument("files", nargs="+")
    rep.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.command == "run" and args.json is None:
        parser.error("run needs --json PATH (the report reads the saved answers from it)")
    run_job(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
