"""Choose IVG's principle-mode scale and SEA's fluency-guard settings, on the DEV prompts only.

Prompts: ``benchmarks/data/fidelity_dev_prompts.txt`` (12, written before any run; the reported
comparison, ``compare_fidelity.py``, uses the separate eval set). Embedded SmolLM2-135M-Instruct,
CPU, models loaded once, one process.

``ivg``: IVG in principle mode (token guidance + chunk-level implicit value, W=2, K=2, L=30,
T=0.7, top-k 50, 64 tokens) at w = 1, 1.5, 2, 3 (and plain sampling for reference). For each:
the judge's reward for the guiding principle (the policy as judge, log P(yes) - log P(no); IVG
does not optimise it), the implicit value IVG does optimise, and fluency: the policy's
perplexity of the answer under the plain prompt and the 3-gram repetition rate.
Rule, fixed before the run: the default is the w with the highest mean judge reward among the
w > 1 whose median perplexity is at most 1.5x that of w = 1 and whose mean repetition rate is
at most that of w = 1 plus 0.05; if none qualifies, keep the smallest w > 1 tried.

``sea``: SEA as a new user runs it (reward "judge" with its default principle, chains=2,
iterations=10, patience=10, 48 tokens, T=0.8, revise on) with the guard OFF, dumping every
decoded text with its reward, its per-token NLL under the policy, its chain's initial-sample
NLL and its repetition rate: a tool to inspect the guard's thresholds on the dev prompts. (The
defaults in docs/sea.md were set before any run, from what the numbers mean.)

    OMP_NUM_THREADS=1 python benchmarks/tune_fidelity.py ivg --json bench-results/tune_ivg.json
    OMP_NUM_THREADS=1 python benchmarks/tune_fidelity.py sea --json bench-results/tune_sea.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import add_common_options, write_json
from fidelity_common import DEV_PROMPTS, IVG_PRINCIPLE, fluency, read_prompts, summary

from align_chains import SEA, BestOfN, SamplingParams, ValueGuided, load_policy, load_reward
from align_chains.rewards import ImplicitReward


def tune_ivg(args: argparse.Namespace) -> dict[str, Any]:
    prompts = read_prompts(DEV_PROMPTS, args.prompts)
    policy = load_policy()
    judge = load_reward("judge", policy=policy, principle=IVG_PRINCIPLE)
    implicit = ImplicitReward(policy, principle=IVG_PRINCIPLE)
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=0.7, top_k=50, seed=args.seed)
    rows: dict[str, Any] = {}
    runs: list[tuple[str, Any]] = [("plain sample", BestOfN(n=1))] if args.plain else []
    runs += [(f"ivg w={w:g}", ValueGuided(principle=IVG_PRINCIPLE, w=w)) for w in args.scales]
    for label, strategy in runs:
        start = time.perf_counter()
        results = strategy.run_batch(prompts, policy, implicit, params)
        seconds = time.perf_counter() - start
        answers = [r.text for r in results]
        judged = judge.score(prompts, answers)
        implicit_values = implicit.score(prompts, answers)
        flu = fluency(policy, prompts, answers)
        rows[label] = {
            "seconds": seconds,
            "judge": judged,
            "implicit": implicit_values,
            **flu,
            "answers": answers,
            "counters": results[0].counters.as_dict(),
        }
        print(
            f"{label:>14}: {seconds:6.1f} s  judge {summary(judged)['mean']:+.3f}  "
            f"implicit {summary(implicit_values)['mean']:+.2f}  "
            f"ppl median {summary(flu['perplexity'])['median']:.2f}  "
            f"rep mean {summary(flu['repetition'])['mean']:.3f}  tokens {summary(flu['tokens'])['mean']:.0f}",
            flush=True,
        )
    return {"prompts": prompts, "principle": IVG_PRINCIPLE, "rows": rows}


def choose_w(files: list[str], prompts: int | None = None) -> dict[str, Any]:
    """Merge sweep files (one process per w on a shared machine) and apply the rule above, on the
    first ``prompts`` dev prompts of every file (files may cover more prompts than others)."""
    rows: dict[str, Any] = {}
    for f in files:
        for label, row in json.loads(Path(f).read_text())["rows"].items():
            rows[label] = {k: v[:prompts] if isinstance(v, list) else v for k, v in row.items()}
    base = rows["ivg w=1"]
    scales = sorted(float(k.split("=")[1]) for k in rows if k.startswith("ivg w="))
    ok = []
    for w in scales:
        row = rows[f"ivg w={w:g}"]
        ppl, rep = summary(row["perplexity"])["median"], summary(row["repetition"])["mean"]
        qualifies = w > 1 and ppl <= 1.5 * summary(base["perplexity"])["median"]
        qualifies = qualifies and rep <= summary(base["repetition"])["mean"] + 0.05
        print(
            f"w={w:g}: judge {summary(row['judge'])['mean']:+.3f}"
            f"  implicit {summary(row['implicit'])['mean']:+.2f}  ppl median {ppl:.2f}  rep {rep:.3f}"
            f"  tokens {summary(row['tokens'])['mean']:.0f}  wall {row['seconds']:.0f} s"
            f"  {'qualifies' if qualifies else ''}"
        )
        if qualifies:
            ok.append((summary(row["judge"])["mean"], w))
    chosen = max(ok)[1] if ok else min(w for w in scales if w > 1)
    print(f"chosen by the rule: w = {chosen:g}")
    return {"rows": rows, "chosen_w": chosen}


def tune_sea(args: argparse.Namespace) -> dict[str, Any]:
    prompts = read_prompts(DEV_PROMPTS, args.prompts)
    policy = load_policy()
    judge = load_reward("judge", policy=policy)
    params = SamplingParams(max_new_tokens=48, temperature=0.8, seed=args.seed)
    sea = SEA(chains=2, iterations=10, patience=10, fluency_guard=False)
    start = time.perf_counter()
    results = sea.run_batch(prompts, policy, judge, params)
    seconds = time.perf_counter() - start
    print(f"SEA (guard off): {seconds:.1f} s", flush=True)
    out = []
    for p, r in enumerate(results):
        out.append(
            {
                "prompt": prompts[p],
                "chosen": r.text,
                "chosen_meta": r.best.meta,
                "trace": [
                    {
                        k: t.get(k)
                        for k in ("chain", "iteration", "hard_reward", "text_nll", "repetition", "text")
                    }
                    for t in r.trace
                ],
                "revised": [
                    {"chain": c.meta["chain"], "reward": c.reward, "guard": c.meta["guard"], "text": c.text}
                    for c in r.candidates
                    if c.meta["kind"] == "revised"
                ],
            }
        )
    return {"seconds": seconds, "results": out}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["ivg", "ivg-choose", "sea"])
    parser.add_argument("files", nargs="*", help="ivg-choose: the sweep's JSON files.")
    parser.add_argument("--plain", action="store_true", help="ivg: add plain sampling as a reference row.")
    parser.add_argument("--prompts", type=int, default=None, help="Use only the first N dev prompts.")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--max-tokens", type=int, default=64)
    add_common_options(parser)
    args = parser.parse_args()
    if args.what == "ivg-choose":
        report = choose_w(args.files, args.prompts)
    else:
        report = tune_ivg(args) if args.what == "ivg" else tune_sea(args)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
