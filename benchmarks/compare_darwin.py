"""DARWIN before/after the replacement fix, against Best-of-N at equal generated tokens.

- ``before``: DARWIN as it was on main before issue 15 (a replaced candidate copied the winner's
  partial answer AND its mutated instruction; the archive kept beaten parents). Run from that
  commit's code, extracted with ``git archive`` into a temporary directory, in a subprocess.
- ``after``: this tree's DARWIN (a replaced candidate keeps its own instruction; the archive
  drops a beaten parent), in a subprocess too, so both are timed alike.
- ``best-of-n``: Best-of-N with N chosen so its generated tokens match ``after``'s median
  (N = ceil(median DARWIN tokens per prompt / max_tokens)).

Settings (CPU-sized; the paper uses 2048 tokens, m=40 and 3 cycles): embedded SmolLM2-135M-
Instruct, n=5, m=16, k=3, 2 cycles, 48 new tokens, T=0.7, top-k 40, seed 0. Optimised reward:
the embedded MiniLM embedding reward. Held-out signal, never seen by the searches: the embedded
policy as an LLM judge with a helpfulness/fluency principle, scoring each method's chosen answer.
The prompt set below was written before any result was looked at.

Each job (before, after, Best-of-N) writes its answers to ``--out-dir`` as it finishes, and a job
whose file is already there is not run again, so a crash or a deadline loses one job. CPU seconds
(the process's, one torch thread) are recorded beside wall seconds: on a shared machine they are
the compute measure that does not swing with the load.

    OMP_NUM_THREADS=1 python benchmarks/compare_darwin.py --out-dir out/darwin --json compare_darwin.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import add_common_options, machine, machine_line, write_json

PROMPTS = [
    "Give me three tips for better sleep.",
    "How do I politely decline a meeting invitation from my manager?",
    "Explain what a hash table is to a beginner.",
    "Write a short thank-you note to a neighbour who watered my plants.",
    "What should I pack for a weekend hiking trip?",
    "Suggest a healthy breakfast I can make in five minutes.",
    "How can I stay focused while working from home?",
    "Describe the water cycle in simple terms.",
    "What are some good ways to practise a new language every day?",
    "Give me advice for my first day at a new job.",
]
PRINCIPLE = "The response answers the question helpfully and accurately, in fluent, natural English."
BEFORE_REV = "0910e9d"  # main before issue 15's DARWIN changes
SETTINGS = {"n": 5, "m": 16, "k": 3, "cycles": 2}
REPO = Path(__file__).resolve().parents[1]


def sampling(max_tokens: int, seed: int) -> Any:
    from align_chains.engine.sampling import SamplingParams

    return SamplingParams(max_new_tokens=max_tokens, temperature=0.7, top_k=40, seed=seed)


def worker(out: Path, max_tokens: int, seed: int, prompts: int | None) -> None:
    """Run DARWIN (whichever ``align_chains`` is importable) on every prompt; write JSON."""
    import align_chains
    from align_chains.models.policy import load_policy
    from align_chains.rewards import load_reward
    from align_chains.strategies.darwin import Darwin

    policy, reward = load_policy(), load_reward("minilm")
    start, cpu = time.perf_counter(), time.process_time()
    results = Darwin(**SETTINGS).run_batch(PROMPTS[:prompts], policy, reward, sampling(max_tokens, seed))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = []
    for result in results:
        scores = [e for e in result.trace if e["event"] == "score"]
        by_cycle: dict[int, list[dict[str, Any]]] = {}
        for e in scores:
            by_cycle.setdefault(e["cycle"], []).append(e)
        alive = []  # distinct instructions the rows decode from at each cycle's last scoring
        for events in by_cycle.values():
            last = max(e["segment"] for e in events)
            alive.append(len({e["mutation"] for e in events if e["segment"] == last}))
        rows.append(
            {
                "text": result.text,
                "reward": result.reward,
                "generated_tokens": result.counters.generated_tokens,
                "prompt_tokens": result.counters.prompt_tokens,
                "instructions_at_end": alive,
                "replacements": sum(e["event"] == "replace" for e in result.trace),
                "archive": len(result.details["archive"]),
            }
        )
    out.write_text(
        json.dumps({"code": align_chains.__file__, "seconds": seconds, "cpu_seconds": cpu, "rows": rows})
    )


def run_worker(code: Path, out: Path, max_tokens: int, seed: int, prompts: int | None) -> dict[str, Any]:
    if out.is_file():  # finished in an earlier, interrupted run
        print(f"reusing {out}", flush=True)
        return json.loads(out.read_text())
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(out),
        "--max-tokens",
        str(max_tokens),
        "--seed",
        str(seed),
        *(["--prompts", str(prompts)] if prompts else []),
    ]
    subprocess.run(cmd, env=env, check=True)
    return json.loads(out.read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--before", default=BEFORE_REV, help="git revision of the 'before' code")
    parser.add_argument("--prompts", type=int, default=None, help="Only the first N prompts.")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="Keep each job's answers here (default: a temporary dir)."
    )
    add_common_options(parser)
    return parser


def run_before_and_after(args: argparse.Namespace) -> dict[str, Any]:
    """DARWIN from the 'before' revision (extracted with git archive) and from this tree."""
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        old = Path(tmp) / "before"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.before, "align_chains"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        return {
            "before": run_worker(old, out_dir / "before.json", args.max_tokens, args.seed, args.prompts),
            "after": run_worker(REPO, out_dir / "after.json", args.max_tokens, args.seed, args.prompts),
        }


def best_of_n_job(n: int, prompts: list[str], policy: Any, reward: Any, args: argparse.Namespace) -> dict:
    """Best-of-n on every prompt (reused from ``--out-dir`` when an earlier run finished it)."""
    from align_chains.strategies.best_of_n import BestOfN

    bon_file = (args.out_dir or Path(tempfile.mkdtemp())) / f"best-of-{n}.json"
    if bon_file.is_file():
        print(f"reusing {bon_file}", flush=True)
        return json.loads(bon_file.read_text())
    BestOfN(n=1).run(prompts[0], policy, reward, sampling(4, args.seed))  # warm-up, untimed
    start, cpu = time.perf_counter(), time.process_time()
    bon = BestOfN(n=n).run_batch(prompts, policy, reward, sampling(args.max_tokens, args.seed))
    job = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "rows": [
            {"text": r.text, "reward": r.reward, "generated_tokens": r.counters.generated_tokens} for r in bon
        ],
    }
    bon_file.write_text(json.dumps(job))
    return job


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    """Medians and means per method over prompts (printed as a table too)."""
    header = (
        f"{'method':<14} {'MiniLM med':>10} {'judge med':>10} {'gen tok med':>11} {'wall s':>7} {'CPU s':>7}"
    )
    print(header)
    summary = {}
    for name, run in runs.items():
        rows = run["rows"]
        s = {
            "reward_median": statistics.median(r["reward"] for r in rows),
            "reward_mean": statistics.mean(r["reward"] for r in rows),
            "judge_median": statistics.median(r["judge"] for r in rows),
            "judge_mean": statistics.mean(r["judge"] for r in rows),
            "generated_tokens_median": statistics.median(r["generated_tokens"] for r in rows),
            "seconds": run["seconds"],
            "cpu_seconds": run.get("cpu_seconds"),
        }
        if "instructions_at_end" in rows[0]:
            s["instructions_at_end_median"] = statistics.median(
                x for r in rows for x in r["instructions_at_end"]
            )
        summary[name] = s
        print(
            f"{name:<14} {s['reward_median']:>10.3f} {s['judge_median']:>10.3f} "
            f"{s['generated_tokens_median']:>11.0f} {s['seconds']:>7.1f} {s['cpu_seconds'] or 0:>7.1f}"
        )
    return summary


def main() -> None:
    args = build_parser().parse_args()
    if args.worker is not None:
        worker(args.worker, args.max_tokens, args.seed, args.prompts)
        return
    prompts = PROMPTS[: args.prompts]
    runs = run_before_and_after(args)

    sys.path.insert(0, str(REPO))
    from align_chains.models.policy import load_policy
    from align_chains.rewards import load_reward

    policy, reward = load_policy(), load_reward("minilm")
    n = math.ceil(statistics.median(r["generated_tokens"] for r in runs["after"]["rows"]) / args.max_tokens)
    runs[f"best-of-{n}"] = best_of_n_job(n, prompts, policy, reward, args)
    judge = load_reward("judge", policy=policy, principle=PRINCIPLE)
    for run in runs.values():
        held_out = judge.score(prompts, [row["text"] for row in run["rows"]])
        for row, value in zip(run["rows"], held_out, strict=True):
            row["judge"] = value

    env = machine()
    print(f"\n{len(prompts)} prompts, {SETTINGS}, max_tokens={args.max_tokens}, seed={args.seed}")
    print(machine_line(env))
    summary = summarize(runs)
    after, before = runs["after"]["rows"], runs["before"]["rows"]
    wins = sum(a["judge"] > b["judge"] for a, b in zip(after, before, strict=True))
    print(f"after beats before under the judge on {wins}/{len(prompts)} prompts")
    write_json(args.json, {"machine": env, "summary": summary, "runs": runs, "prompts": prompts}, indent=1)


if __name__ == "__main__":
    main()
