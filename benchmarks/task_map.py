"""The task map: every strategy on every task family at three token budgets (docs/task_map.md).

    nice -n 5 python benchmarks/task_map.py --split test --per-family 30 --out docs/task_map

runs ``align-chains eval`` once per family (prompt file ``<out>/<family>.jsonl``, resumable
results ``<out>/<family>.json``) in rounds of ``--round`` instances, so a run stopped at any
point has every setting on the same first instances. ``--summarise`` only (re)writes the map
from the results files: ``<out>/map.json`` (the rows) and ``<out>/map.md`` (the tables).

Budgets are matched by generated tokens against one plain sample (1x): ARGS spends reward items,
not tokens, so it sits at 1x with its reward items shown; the settings of the other budgets were
chosen from measured dev-split tokens (docs/task_map.md, "Compute plan").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from common import machine, machine_line, markdown_table

from align_chains.evaluation import evaluate, parse_spec, per_prompt_compute
from align_chains.evaluation.report.pairs import compare
from align_chains.evaluation.stats import summarise as summary_row
from align_chains.tasks import FAMILIES, instances

# budget -> settings; the Best-of-N setting of each budget is what the others are paired against
BUDGETS: dict[str, list[str]] = {
    # ARGS as shipped (w=1.5, greedy: sized for a judge's log-odds) and tuned on the dev split for
    # a [0, 1] exact reward (one keyword is worth a few nats only at w ~ 20; sampling keeps the
    # policy's variety where greedy decoding drifts into generic openings)
    "1x": ["plain", "reward-guided:k=8", "reward-guided:k=16:w=20:mode=sample"],
    # the smallest budget at which the search strategies are more than one plain sample (added
    # after the first map: docs/task_map.md, "A 2x budget")
    "2x": [
        "best-of-n:n=2",
        "early-rejection:n=4:rejection=0.5:decision_every=8",
        "adaptive-best-of-n:n=2",
        "value-guided:beams=1:samples=2:chunk_tokens=8",
    ],
    "4x": [
        "best-of-n:n=4",
        "early-rejection:n=8:rejection=0.5:decision_every=8",
        "adaptive-best-of-n:n=4",
        "value-guided:beams=2:samples=2:chunk_tokens=8",
    ],
    "16x": [
        "best-of-n:n=16",
        "early-rejection:n=32:rejection=0.5:decision_every=8",
        "adaptive-best-of-n:n=16",
        "value-guided:beams=4:samples=4:chunk_tokens=8",
    ],
}
BASELINE = {"1x": "plain", "2x": "best-of-n:n=2", "4x": "best-of-n:n=4", "16x": "best-of-n:n=16"}
# SEA needs a surrogate; DARWIN and SEA are costly: they run where the plan says (docs/task_map.md)
EXTRA: dict[str, list[str]] = {}


def settings_for(family: str, extra: dict[str, list[str]]) -> list[str]:
    keys = [k for budget in BUDGETS.values() for k in budget if k != "plain"]
    return keys + [k for k in extra.get(family, []) if k not in keys]


def write_instances(out: Path, family: str, split: str, count: int) -> Path:
    """A family's first ``count`` instances of ``split`` as an ``align-chains eval`` prompt file."""
    path = out / f"{family}.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in instances(family, split, count)))
    return path


def run(args: argparse.Namespace, extra: dict[str, list[str]]) -> None:
    """Rounds of ``--round`` instances: every family, every setting, then the next round."""
    args.out.mkdir(parents=True, exist_ok=True)
    for family in args.families:
        write_instances(args.out, family, args.split, args.per_family)
    for limit in range(args.round, args.per_family + args.round, args.round):
        for family in args.families:
            start = time.perf_counter()
            evaluate(
                settings_for(family, extra),
                args.out / f"{family}.jsonl",
                holdout="rule:distinct",
                max_tokens=args.max_tokens,
                seed=args.seed,
                batch_size=args.batch_size,
                limit=min(limit, args.per_family),
                json_path=args.out / f"{family}.json",
                show_progress=False,
            )
            print(
                f"{family}: {min(limit, args.per_family)} instances, {time.perf_counter() - start:.0f} s",
                flush=True,
            )


def key_of(spec: str) -> str:
    """The results-file key of a spec ("early-rejection:n=8:rejection=0.5" -> "...:n=8,rejection=0.5")."""
    return spec if spec == "plain" else parse_spec(spec)[0].key


def budget_of(key: str) -> str:
    for budget, specs in BUDGETS.items():
        if key in {key_of(s) for s in specs}:
            return budget
    return "extra"


def load_cells(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """A family's prompt ids and cells (DARWIN's per-prompt compute recomputed, see below)."""
    data = json.loads(path.read_text())
    for cell in data["cells"]:
        if cell["strategy"] == "darwin":  # files from before the runner told DARWIN's own counters apart
            cell["per_prompt"] = per_prompt_compute(cell["compute"], 0, uniform=False)
    # a run stopped inside a round leaves the file's prompt list at that round's limit, while the
    # cells of the earlier, longer rounds stay: pair over every instance any cell has
    ids = [p["id"] for p in data["prompts"]]
    return list(dict.fromkeys(ids + [c["prompt"] for c in data["cells"]])), data["cells"]


def nearest_best_of_n(key: str, summary: dict[str, dict[str, Any]]) -> str:
    """An extra setting is paired with the Best-of-N (2, 4 or 16) whose generated tokens, on the
    same instances, are nearest its own (by ratio), so every comparison is at matching tokens."""
    tokens = summary[key]["compute"]["generated_tokens"]
    bases = [key_of(BASELINE[b]) for b in ("2x", "4x", "16x") if key_of(BASELINE[b]) in summary]
    if not bases or not tokens:
        return key_of(BASELINE["4x"])
    return min(bases, key=lambda b: abs(math.log(tokens / summary[b]["compute"]["generated_tokens"])))


def paired_cells(
    mine: list[dict[str, Any] | None], theirs: list[dict[str, Any] | None]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Success and task reward of two settings' cells, paired per instance (same order; None
    where a setting has no cell or no value): each a mean difference with its interval."""

    def values(cells: list[dict[str, Any] | None], metric: str) -> list[float | None]:
        return [None if c is None or c.get(metric) is None else float(c[metric]) for c in cells]

    success, reward = compare([(values(mine, m), values(theirs, m)) for m in ("success", "task_reward")])
    return success, reward


def family_rows(family: str, ids: list[str], all_cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: rates, rewards, compute, paired against Best-of-N at its budget."""
    cells = {(c["key"], c["prompt"]): c for c in all_cells}
    plain = {c["prompt"]: c for c in all_cells if c["key"] == "plain"}
    keys = list(dict.fromkeys(c["key"] for c in all_cells))
    summary = {k: summary_row([c for c in all_cells if c["key"] == k], plain) for k in keys}
    rows = []
    for key, row in summary.items():
        budget = budget_of(key)
        base = key_of(BASELINE[budget]) if budget in BASELINE else nearest_best_of_n(key, summary)
        column = [cells.get((key, i)) for i in ids]
        ref = [cells.get((base, i)) for i in ids]
        success_pair, reward_pair = paired_cells(column, ref) if key != base else (None, None)
        rows.append(
            {
                "family": family,
                "budget": budget,
                "key": key,
                "instances": row["prompts"],
                "success": row.get("success_rate"),
                "fluent": row.get("fluent_rate"),
                "constraint": row.get("constraint_rate"),
                "reward": row["reward"],
                "compute": row["compute"],
                "vs": base,
                "paired_success": success_pair,
                "paired_reward": reward_pair,
            }
        )
    return rows


def fmt(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.2f} [{stat['ci'][0]:.2f}, {stat['ci'][1]:.2f}]"


def paired(p: dict[str, Any] | None) -> str:
    if p is None:
        return "(baseline)"
    return f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}] {p['wins']}/{p['losses']}/{p['ties']}"


def _budget_rank(budget: str) -> int:
    return list(BUDGETS).index(budget) if budget in BUDGETS else len(BUDGETS)


def tables(rows: list[dict[str, Any]]) -> str:
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        body = [
            [
                r["budget"],
                r["key"],
                r["instances"],
                fmt(r["success"]),
                fmt(r["constraint"]),
                fmt(r["fluent"]),
                fmt(r["reward"]),
                f"{r['compute']['generated_tokens']:.0f}",
                f"{r['compute']['reward_items']:.0f}",
                f"{r['compute']['seconds']:.2f}",
                paired(r["paired_success"]),
                paired(r["paired_reward"]),
            ]
            for r in sorted(rows, key=lambda r: _budget_rank(r["budget"]))
            if r["family"] == family
        ]
        header = [
            "budget", "setting", "n", "success [95% CI]", "constraint met", "fluent", "task reward",
            "gen tokens", "reward items", "seconds", "success vs BoN (W/L/T)", "reward vs BoN (W/L/T)",
        ]  # fmt: skip
        out.append(f"### {family}\n\n" + markdown_table(header, body))
    return "\n\n".join(out)


def summarise(args: argparse.Namespace) -> None:
    paths = {f: args.out / f"{f}.json" for f in args.families}
    loaded = {f: load_cells(path) for f, path in paths.items() if path.exists()}
    rows = [r for f, (ids, cells) in loaded.items() for r in family_rows(f, ids, cells)]
    pooled_ids = [i for ids, _ in loaded.values() for i in ids]
    pooled = [c for _, cells in loaded.values() for c in cells]
    rows += family_rows("all families pooled", pooled_ids, pooled)
    payload = {"machine": machine(), "split": args.split, "max_tokens": args.max_tokens, "rows": rows}
    (args.out / "map.json").write_text(json.dumps(payload, indent=1))
    (args.out / "map.md").write_text(machine_line(payload["machine"]) + "\n\n" + tables(rows) + "\n")
    print(tables(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--per-family", type=int, default=30)
    parser.add_argument("--round", type=int, default=5, help="instances added per round (default 5)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", nargs="*", default=[], help="FAMILY=SPEC: more settings for a family")
    parser.add_argument("--out", type=Path, default=Path("docs/task_map"))
    parser.add_argument("--summarise", action="store_true", help="only rewrite the map from the results")
    args = parser.parse_args(argv)
    extra: dict[str, list[str]] = {}
    for item in args.extra:
        family, _, spec = item.partition("=")
        extra.setdefault(family, []).append(spec)
    if not args.summarise:
        run(args, extra)
    summarise(args)


if __name__ == "__main__":
    sys.exit(main())
