"""IVG's chunk search: how its decisions tie, and ties cut by row order vs spread over parents.

    nice -n 5 python benchmarks/ivg_ties.py --families keywords avoidance format --instances 8

runs IVG's chunk search on the reward (the task map's 4x and 16x settings) with ``ties="order"``
and ``ties="spread"``, and Best-of-4 / Best-of-16, on ``--split dev`` instances (tuning uses the
dev split only; docs/task_map.md) through ``align-chains eval`` (resumable results in
``--out/<family>.json``). It then prints, per family and setting, success and task reward (paired
against Best-of-N at the same budget, as the map pairs them) and, from IVG's traces, how many
chunk decisions cut inside a tie, how many distinct parents the kept beams have, and how many
distinct openings (first ``--opening-words`` words) the final rows have. ``--summarise`` only
reads the results (``--split test --summarise`` reads the task map's test-split files, where
the map's own IVG rows are the ``"order"`` ones). Summary JSON: ``--out/ivg_ties_<split>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import machine
from task_map import key_of, load_cells, paired_cells, write_instances

from align_chains.evaluation import evaluate
from align_chains.tasks import FAMILIES

IVG = "value-guided:beams={w}:samples={k}:chunk_tokens=8:ties={ties}"
SETTINGS = {
    "4x": ["best-of-n:n=4", IVG.format(w=2, k=2, ties="order"), IVG.format(w=2, k=2, ties="spread")],
    "16x": ["best-of-n:n=16", IVG.format(w=4, k=4, ties="order"), IVG.format(w=4, k=4, ties="spread")],
}


def decisions(cell: dict[str, Any]) -> list[tuple[bool, int]]:
    """Per chunk decision of one IVG cell: (the cut fell inside equal values, distinct parents
    among the kept rows; None at the first decision, whose rows have no shared parent)."""
    by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in cell.get("trace") or []:
        if "kept" in record:
            by_step[record["step"]].append(record)
    out = []
    for step, records in sorted(by_step.items()):
        kept = [r for r in records if r["kept"]]
        dropped = [r["value"] for r in records if not r["kept"] and r["value"] is not None]
        tied = bool(dropped) and min(r["value"] for r in kept) == max(dropped)
        out.append((tied, len({r["parent"] for r in kept}) if step > min(by_step) else None))
    return out


def openings(cell: dict[str, Any], words: int) -> int:
    """Distinct openings (first ``words`` words) among the cell's final rows."""
    return len({" ".join(c["text"].split()[:words]) for c in cell.get("candidates") or []})


def summary(family: str, ids: list[str], all_cells: list[dict[str, Any]], words: int) -> list[dict[str, Any]]:
    """One row per setting: means, paired against Best-of-N at its budget (spread rows also
    against order), tied cuts, parents kept and openings from IVG's traces."""
    cells = {(c["key"], c["prompt"]): c for c in all_cells}
    keys = {c["key"] for c in all_cells}
    rows = []
    for specs in SETTINGS.values():
        # the map's own IVG rows ran before ``ties`` existed: their key has no ties=order
        named = [key_of(s) if key_of(s) in keys else key_of(s.replace(":ties=order", "")) for s in specs]
        column = {key: [cells.get((key, i)) for i in ids] for key in named}
        for key in named:
            present = [c for c in column[key] if c is not None]
            if not present:
                continue
            made = [d for c in present for d in decisions(c)]
            later = [p for _, p in made if p is not None]  # the first decision has no shared parents
            row = {
                "family": family,
                "key": key,
                "instances": len(present),
                "success": statistics.mean(float(c["success"]) for c in present),
                "task_reward": statistics.mean(float(c["task_reward"]) for c in present),
                "tokens": statistics.mean(c["per_prompt"]["generated_tokens"] for c in present),
                "vs_best_of_n": None if key == named[0] else paired_cells(column[key], column[named[0]]),
                "vs_order": paired_cells(column[key], column[named[1]]) if key == named[2] else None,
                "decisions": len(made),
                "tied": sum(t for t, _ in made),
                "parents_kept": statistics.mean(later) if later else None,
                "openings": statistics.mean(openings(c, words) for c in present),
            }
            rows.append(row)
    return rows


def line(r: dict[str, Any]) -> str:
    def vs(p: dict[str, Any] | None) -> str:
        return (
            ""
            if p is None
            else f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}] {p['wins']}/{p['losses']}"
        )

    base, order = r["vs_best_of_n"] or (None, None), r["vs_order"] or (None, None)
    tied, parents = "-", "-"
    if r["decisions"]:
        tied, parents = f"{r['tied']}/{r['decisions']}", f"{r['parents_kept']:.2f}"
    return (
        f"| {r['family']} | {r['key']} | {r['instances']} | {r['success']:.2f} | {vs(base[0])} "
        f"| {r['task_reward']:.2f} | {vs(base[1])} | {vs(order[0])} | {vs(order[1])} | {r['tokens']:.0f} "
        f"| {tied} | {parents} | {r['openings']:.1f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=("dev", "test"), default="dev", help="test: --summarise only")
    families = ["keywords", "avoidance", "format"]
    parser.add_argument("--families", nargs="+", default=families, choices=FAMILIES)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--budgets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--opening-words", type=int, default=6, help="words of an opening (~8 tokens)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ivg_dev"))
    parser.add_argument("--summarise", action="store_true", help="only read the results files")
    args = parser.parse_args(argv)
    if args.split == "test" and not args.summarise:
        parser.error("tuning runs on the dev split only; the test split runs through task_map.py")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarise:
        for family in args.families:
            evaluate(
                [s for b in args.budgets for s in SETTINGS[b]],
                write_instances(args.out, family, args.split, args.instances),
                holdout="rule:distinct",
                max_tokens=args.max_tokens,
                seed=0,
                batch_size=args.batch_size,
                limit=args.instances,
                json_path=args.out / f"{family}.json",
                show_progress=False,
            )
            print(f"{family}: done", flush=True)
    loaded = {
        f: load_cells(args.out / f"{f}.json") for f in args.families if (args.out / f"{f}.json").exists()
    }
    rows = [r for f, (ids, cells) in loaded.items() for r in summary(f, ids, cells, args.opening_words)]
    pooled_ids = [i for ids, _ in loaded.values() for i in ids]
    rows += summary(
        "pooled", pooled_ids, [c for _, cells in loaded.values() for c in cells], args.opening_words
    )
    header = (
        "family", "setting", "n", "success", "vs BoN (W/L)", "task reward", "vs BoN", "success vs order",
        "reward vs order", "tokens", "tied cuts", "parents kept", "openings",
    )  # fmt: skip
    print("| " + " | ".join(header) + " |\n" + "| --- " * len(header) + "|")
    print("\n".join(line(r) for r in rows))
    payload = {"machine": machine(), "split": args.split, "rows": rows}
    (args.out / f"ivg_ties_{args.split}.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    sys.exit(main())
