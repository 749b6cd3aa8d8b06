"""DARWIN's mutation modes on the dev split: rewrite (the paper's), guard and restate against
Best-of-4 at ~4x tokens (docs/task_map.md, "DARWIN with mutations that keep the constraint").

    nice -n 5 python benchmarks/darwin_modes.py --per-family 8 --out /tmp/darwin_dev

runs ``align-chains eval`` per family on dev-split instances (results resume into
``<out>/<family>.json``), then prints per family and pooled: success against Best-of-4 on the
same instances (wins/losses), the task-reward difference, generated tokens, how many of the
policy's rewrites that differ from the original keep every constraint term of the instance
(its words, its number, its tone word), the guard's drops, and how often the chosen answer
answered a mutated instruction; then each mode paired with the paper's mode at the same
setting. ``--report`` only prints, from the results files (also the
test split's: ``--report --out docs/task_map --baseline best-of-n:n=16 --families keywords
avoidance`` reads the map's DARWIN cells against Best-of-16).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import machine, machine_line
from task_map import write_instances

from align_chains.evaluation import evaluate
from align_chains.evaluation.report.pairs import compare
from align_chains.strategies.mutation import keeps_terms

BASE = "darwin:n=2:k=2:cycles=1:m=16"
SETTINGS = ["best-of-n:n=4", BASE, f"{BASE}:mutation_mode=guard", f"{BASE}:mutation_mode=restate"]
BEST_OF_4 = "best-of-n:n=4"


def task_terms(task: dict[str, Any]) -> list[str]:
    """The instance's constraint terms, from its task spec (what the reward checks): the words to
    use (not the banned ones), the number N or K, the tone word."""
    terms = [w.lower() for w in task.get("words", [])] if task["family"] != "avoidance" else []
    terms += [str(task[key]) for key in ("n", "k") if key in task]
    return terms + ([task["tone"]] if "tone" in task else [])


def cell_counts(cell: dict[str, Any], original: str, terms: list[str]) -> tuple[int, int, int, bool]:
    """(rewrites differing from the original, of them keeping every term, guard drops, whether
    the chosen answer answered a mutated instruction)."""
    differ = kept = dropped = 0
    for event in cell["trace"]:
        if event["event"] != "mutation" or not event["parsed"]:
            continue
        text = event.get("dropped") or event["instruction"]
        dropped += bool(event.get("dropped"))
        if text.strip() != original.strip():
            differ, kept = differ + 1, kept + keeps_terms(text, terms)
    meta = cell["candidates"][cell["chosen_index"]].get("meta", {})
    mutated = meta.get("cycle", 0) > 0 and meta["instruction"].strip() != original.strip()
    return differ, kept, dropped, mutated


def report(out: Path, families: list[str], baseline: str = BEST_OF_4) -> None:
    pooled: dict[str, list[float]] = {}
    for family in families:
        data = json.loads((out / f"{family}.json").read_text())
        lines = (json.loads(x) for x in (out / f"{family}.jsonl").read_text().splitlines() if x.strip())
        prompts = {x["id"]: x for x in lines}  # every instance (a results file lists the last round's)
        bon = {c["prompt"]: c for c in data["cells"] if c["key"] == baseline}
        print(f"## {family}")
        for key in dict.fromkeys(c["key"] for c in data["cells"] if c["strategy"] == "darwin"):
            mine = {c["prompt"]: c for c in data["cells"] if c["key"] == key and c["prompt"] in bon}
            row = [0.0] * 12
            for pid, cell in mine.items():
                other = bon[pid]
                original, terms = prompts[pid]["prompt"], task_terms(prompts[pid]["reward"])
                counts = cell_counts(cell, original, terms)
                row = [a + b for a, b in zip(row, [
                    1, cell["success"], other["success"], cell["success"] > other["success"],
                    cell["success"] < other["success"], cell["task_reward"] - other["task_reward"],
                    cell["per_prompt"]["generated_tokens"], other["per_prompt"]["generated_tokens"], *counts,
                ], strict=True)]  # fmt: skip
            print(line(key, row))
            pooled[key] = [a + b for a, b in zip(pooled.get(key, [0.0] * 12), row, strict=True)]
    print("## pooled")
    for key, row in pooled.items():
        print(line(key, row))


def versus_paper(out: Path, families: list[str]) -> None:
    """Each mode's cells paired per instance with the paper's mode at the same n, k, cycles, m
    (success and task reward: mean difference [95% bootstrap interval], wins/losses), per
    family and pooled."""
    pooled: dict[str, list[list[float]]] = {}
    print("## against the paper's mode (same setting), paired")
    for family in families:
        cells = json.loads((out / f"{family}.json").read_text())["cells"]
        by_key: dict[str, dict[str, dict[str, Any]]] = {}
        for cell in cells:
            by_key.setdefault(cell["key"], {})[cell["prompt"]] = cell
        for key in [k for k in by_key if ",mutation_mode=" in k]:
            paper = by_key.get(key.split(",mutation_mode=")[0], {})
            ids = [i for i in by_key[key] if i in paper]
            mine = by_key[key]
            metrics = ("success", "task_reward")
            values = [[float(c[i][m]) for i in ids] for m in metrics for c in (mine, paper)]
            print(paired_line(f"{family} {key}", values))
            pooled[key] = [a + b for a, b in zip(pooled.get(key, [[], [], [], []]), values, strict=True)]
    for key, values in pooled.items():
        print(paired_line(f"pooled {key}", values))


def paired_line(label: str, v: list[list[float]]) -> str:
    if not v[0]:
        return f"  {label}: no instance in common"
    s, r = compare([(v[0], v[1]), (v[2], v[3])])
    assert s is not None and r is not None
    return (
        f"  {label}: n={len(v[0])} success {sum(v[0]) / len(v[0]):.2f} vs {sum(v[1]) / len(v[1]):.2f}, "
        f"{s['mean']:+.2f} [{s['low']:+.2f}, {s['high']:+.2f}] W/L {s['wins']}/{s['losses']}; "
        f"task reward {r['mean']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"
    )


def line(key: str, r: list[float]) -> str:
    n = r[0]
    return (
        f"  {key}: n={n:.0f} success {r[1]:.0f} vs Best-of-N {r[2]:.0f} (W/L {r[3]:.0f}/{r[4]:.0f}), "
        f"task reward {r[5] / n:+.3f}, tokens {r[6] / n:.0f} ({r[7] / n:.0f}), rewrites keeping every "
        f"term {r[9]:.0f}/{r[8]:.0f}, guard drops {r[10]:.0f}, chosen from a mutation {r[11]:.0f}/{n:.0f}"
    )


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--per-family", type=int, default=8)
    families = ["keywords", "keywords-length", "sentiment", "length"]
    parser.add_argument("--families", nargs="+", default=families)
    parser.add_argument("--out", type=Path, default=Path("/tmp/darwin_dev"))
    parser.add_argument("--report", action="store_true", help="only print, from the results files")
    parser.add_argument("--baseline", default=BEST_OF_4, help="the results key DARWIN is paired with")
    args = parser.parse_args()
    if not args.report:
        args.out.mkdir(parents=True, exist_ok=True)
        print(machine_line(machine()), flush=True)
        for family in args.families:
            start = time.perf_counter()
            prompts = write_instances(args.out, family, "dev", args.per_family)
            evaluate(SETTINGS, prompts, holdout="rule:distinct", max_tokens=32, seed=0,
                     batch_size=5, limit=args.per_family, json_path=args.out / f"{family}.json",
                     show_progress=False)  # fmt: skip
            print(f"{family}: {time.perf_counter() - start:.0f} s", flush=True)
    report(args.out, args.families, args.baseline)
    versus_paper(args.out, args.families)


if __name__ == "__main__":
    main()
