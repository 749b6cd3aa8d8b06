"""The report's data: one or two checked results files -> the JSON the page embeds.

The page reads two documents: ``core`` (settings, summary rows, one small record per cell, the
paired comparisons precomputed in Python) and ``details`` (each cell's candidates, trace and
compute), which the page parses only when a details panel first opens, so that a large report
becomes interactive quickly. Cells are matched to prompts by id; prompts are the union of the
runs' prompt lists, in the first run's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from align_chains.evaluation.report.load import load_eval_file
from align_chains.evaluation.report.pairs import all_pairs, compare

CORE_KEYS = ("reward", "holdout", "task_reward", "strategy_reward", "constraint_met", "fluent", "success")
"""Cell values the matrix shows and filters on (the rest goes to the details document)."""
METRICS = {
    "reward": "optimised reward",
    "holdout": "held-out reward",
    "task_reward": "task reward",
    "success": "success (0/1)",
}
"""Per-prompt values a paired comparison can be made on, when cells carry them."""
_STAT_KEYS = (
    "reward",
    "holdout",
    "win_rate",
    "holdout_win_rate",
    "success_rate",
    "constraint_rate",
    "fluent_rate",
)


def _stat(value: Any) -> dict[str, Any] | None:
    """A summary statistic as ``{"mean", "low", "high", "n"}`` (files of version 1 have ``ci``)."""
    if not isinstance(value, dict) or value.get("mean") is None:
        return None
    ci = value.get("ci") or [value.get("low"), value.get("high")]
    return {"mean": value["mean"], "low": ci[0], "high": ci[1], "n": value.get("n")}


def _summary_row(row: dict[str, Any]) -> dict[str, Any]:
    compute = row.get("compute") or {}
    return {
        "prompts": row.get("prompts"),
        **{key: _stat(row.get(key)) for key in _STAT_KEYS},
        "compute": {
            k: compute.get(k)
            for k in ("generated_tokens", "forward_passes", "reward_calls", "reward_items", "seconds")
        },
    }


def _metric_value(cell: dict[str, Any], metric: str) -> float | None:
    value = cell.get(metric)
    if metric == "success":
        return None if value is None else float(bool(value))
    return value


def _settings(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's settings: those its config lists, then any other key its cells hold (a resumed file)."""
    keys = list(data["config"].get("strategies") or [])
    keys += [c["key"] for c in data["cells"] if c["key"] not in keys]
    first = {}
    for cell in data["cells"]:
        first.setdefault(cell["key"], cell)
    out = []
    for key in dict.fromkeys(keys):
        cell = first.get(key, {})
        strategy, _, label = key.partition(":")
        out.append(
            {
                "key": key,
                "strategy": cell.get("strategy") or strategy,
                "label": label,
                "settings": cell.get("settings", {}),
            }
        )
    return out


def _run(data: dict[str, Any], path: Path, prompt_index: dict[str, int]) -> tuple[dict[str, Any], list]:
    """One run's core document and its cells' details, in the same order."""
    settings = _settings(data)
    setting_index = {s["key"]: i for i, s in enumerate(settings)}
    own_prompts = {p["id"] for p in data["prompts"]}
    summary = {row.get("key"): _summary_row(row) for row in data.get("summary", [])}
    cells, details = [], []
    for cell in data["cells"]:
        if cell["prompt"] not in own_prompts:
            continue  # a cell of an earlier, longer run of the same file
        p, s = prompt_index[cell["prompt"]], setting_index[cell["key"]]
        per_prompt = cell.get("per_prompt") or {}
        chosen = next((c for c in cell.get("candidates", []) if c.get("chosen")), None)
        cells.append(
            {
                "p": p,
                "s": s,
                "text": cell["text"],
                **{k: cell.get(k) for k in CORE_KEYS},
                "gen": per_prompt.get("generated_tokens"),
                "sec": per_prompt.get("seconds"),
                "calls": per_prompt.get("reward_calls"),
                "tokens": chosen.get("tokens") if chosen else None,
                "finish": cell.get("finish_reason"),
            }
        )
        details.append({k: v for k, v in cell.items() if k not in ("key", "prompt", "text", *CORE_KEYS)})
    metrics = [m for m in METRICS if any(c.get(m) is not None for c in cells)]
    columns = {m: [[None] * len(prompt_index) for _ in settings] for m in metrics}
    for cell in cells:
        for m in metrics:
            columns[m][cell["s"]][cell["p"]] = _metric_value(cell, m)
    run = {
        "file": str(path),
        "name": path.name,
        "version": data["version"],
        "config": data["config"],
        "settings": settings,
        "summary": [summary.get(s["key"]) for s in settings],
        "errors": data.get("errors", []),
        "prompts": [prompt_index[p["id"]] for p in data["prompts"]],
        "expected": len(data["prompts"]) * len(data["config"].get("strategies") or settings),
        "dropped": len(data["cells"]) - len(cells),
        "metrics": metrics,
        "cells": cells,
        "pairs": {m: all_pairs(columns[m]) for m in metrics},
    }
    return run, details


def _run_comparison(a: dict[str, Any], b: dict[str, Any], num_prompts: int, skip: set[int]) -> dict[str, Any]:
    """Run B minus run A, per setting both ran, over the prompts both ran (``skip``: changed text)."""
    shared = [s["key"] for s in a["settings"] if s["key"] in {t["key"] for t in b["settings"]}]
    metrics = [m for m in a["metrics"] if m in b["metrics"]]

    def column(run: dict[str, Any], key: str, metric: str) -> list[float | None]:
        s = next(i for i, t in enumerate(run["settings"]) if t["key"] == key)
        values: list[float | None] = [None] * num_prompts
        for cell in run["cells"]:
            if cell["s"] == s and cell["p"] not in skip:
                values[cell["p"]] = _metric_value(cell, metric)
        return values

    jobs = [(key, m) for key in shared for m in metrics]
    stats = compare([(column(b, key, m), column(a, key, m)) for key, m in jobs])
    return {
        "settings": shared,
        "metrics": metrics,
        "stats": [[key, m, st] for (key, m), st in zip(jobs, stats, strict=True)],
    }


def page_data(paths: Sequence[str | Path]) -> tuple[dict[str, Any], list[list[dict[str, Any]]]]:
    """Check and read one or two results files -> (core document, details per run per cell)."""
    if not 1 <= len(paths) <= 2:
        raise ValueError(f"The report shows one run or compares two; got {len(paths)} files.")
    loaded = [(Path(p), load_eval_file(p)) for p in paths]
    prompts: dict[str, dict[str, Any]] = {}
    changed: list[str] = []
    for _, data in loaded:
        for p in data["prompts"]:
            if p["id"] in prompts and prompts[p["id"]]["messages"] != p["messages"]:
                changed.append(p["id"])
            prompts.setdefault(p["id"], {k: p.get(k) for k in ("id", "messages", "task", "split")})
    index = {pid: i for i, pid in enumerate(prompts)}
    runs, details = [], []
    for path, data in loaded:
        run, cells = _run(data, path, index)
        runs.append(run)
        details.append(cells)
    try:
        tool = f"align-chains {version('align-chains')}"
    except PackageNotFoundError:  # pragma: no cover - a source checkout without metadata
        tool = "align-chains"
    core = {
        "tool": tool,
        "prompts": list(prompts.values()),
        "metric_names": METRICS,
        "runs": runs,
        "changed_prompts": changed,
        "comparison": None,
    }
    if len(runs) == 2:  # a prompt whose text differs between the runs is not compared
        skip = {index[pid] for pid in changed}
        for run in runs:
            run["comparable"] = [p for p in run["prompts"] if p not in skip]
        core["comparison"] = _run_comparison(runs[0], runs[1], len(prompts), skip)
    return core, details
