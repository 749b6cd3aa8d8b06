"""Ray faults: an actor process killed mid-dataset, and batches cut off by a time budget.
Either way a resumed run loses no row and redoes only the unfinished ones."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from align_chains_ray import align_dataset, finished_ids

PROMPTS = [{"id": f"r{i}", "prompt": f"Row {i}: say something."} for i in range(8)]


def _rows(output_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(output_dir.glob("*.json"))
        for line in path.read_text().splitlines()
    ]


def _scored(log: Path) -> Counter[str]:
    """How many times each row was scored (each scoring appends the row id to the log)."""
    return Counter(log.read_text().split()) if log.exists() else Counter()


def make_crashing_reward(log: Path, marker: Path, crash_on: str):
    """A reward that logs each row it scores and kills its own actor process the first time it
    sees ``crash_on`` (``os._exit``: no exception, no cleanup, as an OOM kill would)."""

    def reward(prompt: str, response: str) -> float:
        row = prompt.split(":")[0].split()[-1]
        if crash_on in prompt and not marker.exists():
            marker.write_text("crashed")
            os._exit(1)
        with log.open("a") as handle:
            handle.write(f"r{row}\n")
        return float(len(response))

    return reward


def test_an_actor_killed_mid_dataset_loses_nothing_and_resume_redoes_only_unfinished_rows(
    ray_cluster, ray_policy_dir, tmp_path
):
    out, log, marker = tmp_path / "aligned", tmp_path / "scored.log", tmp_path / "crashed"
    settings = {"policy": str(ray_policy_dir), "n": 2, "max_tokens": 4, "seed": 0}
    reward = make_crashing_reward(log, marker, crash_on="Row 5:")
    try:
        align_dataset(PROMPTS, out, settings={**settings, "reward": reward}, batch_size=1, actors=2)
        first_failed = False
    except Exception:  # Ray may give up on the dataset, or retry the block on a new actor
        first_failed = True
    assert marker.exists(), "the actor was never killed"
    done_first = finished_ids(out)
    scored_first = _scored(log)

    run = align_dataset(PROMPTS, out, settings={**settings, "reward": reward}, batch_size=1, actors=1)
    assert run.skipped == len(done_first) and run.processed == len(PROMPTS) - len(done_first)
    scored_again = _scored(log) - scored_first
    assert not set(scored_again) & done_first, "a finished row was redone"
    assert set(scored_again) == {p["id"] for p in PROMPTS} - done_first
    rows = [r for r in _rows(out) if r["error"] is None]
    counts = Counter(r["id"] for r in rows)
    assert set(counts) == {p["id"] for p in PROMPTS}  # nothing lost
    assert max(counts.values()) == 1  # nothing written twice
    print(f"\nfirst run {'failed' if first_failed else 'completed'} with {len(done_first)} rows; "
          f"resume redid {run.processed}")  # fmt: skip


def test_a_time_budget_cuts_batches_off_and_resume_redoes_exactly_them(ray_cluster, ray_policy_dir, tmp_path):
    out = tmp_path / "aligned"

    def length(prompt: str, response: str) -> float:  # pickled by value into the actors
        return float(len(response))

    # 400 tokens a row take well over 0.2 s: every batch is cut off mid-decode
    settings = {"policy": str(ray_policy_dir), "n": 2, "max_tokens": 400, "reward": length}
    first = align_dataset(PROMPTS[:4], out, settings=settings, batch_size=2, time_budget_s=0.2)
    assert first.processed == 4
    rows = _rows(out)
    assert len(rows) == 4 and all("Cancelled" in (r["error"] or "") for r in rows), rows
    assert finished_ids(out) == set()
    second = align_dataset(PROMPTS[:4], out, settings=settings, batch_size=2, time_budget_s=120)
    assert (second.skipped, second.processed) == (0, 4)
    assert finished_ids(out) == {p["id"] for p in PROMPTS[:4]}
