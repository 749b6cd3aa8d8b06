"""How often SEA's fluency guard admits text the evaluation's fluency gate rejects.

    python benchmarks/sea_guard_vs_gate.py docs/task_map/keywords.json docs/task_map/avoidance.json

Reads SEA cells of ``align-chains eval`` results files (the task map's), takes every candidate
SEA produced by optimisation or revision that its guard admitted (no ``meta.guard.reason``; initial
samples are the guard's own references and are left out), and puts it through the gate
(``align_chains.evaluation.fluency``) against the plain sample of the same prompt. Prints and
optionally writes (``--json``) the counts and every text the gate rejects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import machine

from align_chains.evaluation.fluency import measure, verdict
from align_chains.models.policy import load_policy


def admitted(path: Path) -> list[dict]:
    """SEA's guard-admitted optimised/revised candidates of one results file, with their prompt."""
    data = json.loads(path.read_text())
    prompts = {p["id"]: p["messages"] for p in data["prompts"]}
    plain = {c["prompt"]: c["fluency"]["nll"] for c in data["cells"] if c["key"] == "plain"}
    out = []
    for cell in data["cells"]:
        if cell["strategy"] != "sea":
            continue
        for cand in cell.get("candidates", []):
            meta = cand.get("meta") or {}
            guard = meta.get("guard") or {}  # the guard's measurements; "reason" set when it excluded
            if meta.get("kind") == "initial" or guard.get("reason"):
                continue
            out.append(
                {
                    "file": path.stem,
                    "prompt": cell["prompt"],
                    "messages": prompts[cell["prompt"]],
                    "reference_nll": plain.get(cell["prompt"]),
                    "text": cand["text"],
                    "chosen": bool(cand.get("chosen")),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    items = [x for f in args.files for x in admitted(f)]
    policy = load_policy()
    for start in range(0, len(items), 8):
        chunk = items[start : start + 8]
        measured = measure(policy, [x["messages"] for x in chunk], [x["text"] for x in chunk])
        for item, m in zip(chunk, measured, strict=True):
            item["gate"] = verdict(m, item["reference_nll"])
    rejected = [x for x in items if not x["gate"]["fluent"]]
    chosen = [x for x in items if x["chosen"]]
    summary = {
        "admitted_by_guard": len(items),
        "rejected_by_gate": len(rejected),
        "chosen": len(chosen),
        "chosen_rejected_by_gate": sum(not x["gate"]["fluent"] for x in chosen),
        "reasons": {
            r: sum(x["gate"]["reason"] == r for x in rejected) for r in ("nll", "repetition", "empty")
        },
    }
    print(json.dumps(summary, indent=1))
    for x in rejected:
        gate = x["gate"]
        print(f"- [{gate['reason']}] nll {gate['nll']:.2f} rep {gate['repetition']:.2f}: {x['text'][:100]!r}")
    if args.json:
        slim = [{k: v for k, v in x.items() if k != "messages"} for x in items]
        args.json.write_text(json.dumps({"machine": machine(), "summary": summary, "items": slim}, indent=1))


if __name__ == "__main__":
    main()
