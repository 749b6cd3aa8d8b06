"""The Ray Data pipeline on a local 2-CPU cluster with tiny models: outputs, counters, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from align_chains_ray import align_dataset, finished_ids

from align_chains.errors import InvalidInputError

PROMPTS = [f"Question {i}: say something." for i in range(6)]


def _rows(output_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(output_dir.glob("*.json"))
        for line in path.read_text().splitlines()
    ]


def test_align_then_resume_after_failures(ray_cluster, ray_policy_dir, tmp_path):
    out = tmp_path / "aligned"

    def flaky(prompt: str, response: str) -> float:  # pickled by value into the actors
        if "[fail]" in prompt:
            raise RuntimeError("reward server down")
        return float(len(response))

    def length(prompt: str, response: str) -> float:
        return float(len(response))

    first = [{"id": f"q{i}", "prompt": p} for i, p in enumerate(PROMPTS[:3])] + [
        {"id": "q3", "prompt": "[fail] x"}
    ]
    settings = {"policy": str(ray_policy_dir), "n": 2, "max_tokens": 4, "seed": 0}
    run = align_dataset(first, out, settings={**settings, "reward": flaky}, batch_size=2, actors=2)
    assert (run.total, run.skipped, run.processed) == (4, 0, 4)
    rows = {r["id"]: r for r in _rows(out)}
    assert sorted(rows) == ["q0", "q1", "q2", "q3"]
    for row_id in ("q0", "q1", "q2"):
        r = rows[row_id]
        assert r["error"] is None and r["strategy"] == "best-of-n" and r["candidates"] == 2
        assert r["reward"] == float(len(r["response"]))  # the best of 2 under the length reward
        assert r["compute_generated_tokens"] >= 1 and r["compute_reward_items"] == 2
    assert "reward server down" in rows["q3"]["error"] and rows["q3"]["reward"] is None
    assert rows["q3"]["response"] is not None  # the generated text survives the reward failure
    assert finished_ids(out) == {"q0", "q1", "q2"}

    # resume on the full set: the three finished rows are not redone, the failed one is retried
    before = {p.name for p in out.glob("*.json")}
    everything = [{"id": f"q{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    run = align_dataset(everything, out, settings={**settings, "reward": length}, batch_size=2, actors=1)
    assert (run.total, run.skipped, run.processed) == (6, 3, 3)
    new_rows = [
        json.loads(line)
        for p in out.glob("*.json")
        if p.name not in before
        for line in p.read_text().splitlines()
    ]
    assert sorted(r["id"] for r in new_rows) == ["q3", "q4", "q5"]
    assert all(r["error"] is None for r in new_rows)
    assert finished_ids(out) == {f"q{i}" for i in range(6)}
    # a Ray Dataset as input takes the same path: everything is finished, no actor starts
    import ray

    again = align_dataset(ray.data.from_items(everything), out, settings={**settings, "reward": length})
    assert (again.total, again.skipped, again.processed) == (6, 6, 0)
    with pytest.raises(InvalidInputError, match="lacks \\['prompt'\\]"):
        align_dataset(ray.data.from_items([{"id": "x", "text": "hi"}]), out)


def test_finished_ids_reads_parquet_and_tolerates_a_cut_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "error": [None, "boom"]}), tmp_path / "part.parquet")
    (tmp_path / "part.json").write_text('{"id": "c", "error": null}\n{"id": "d", "err')  # crash mid-line
    assert finished_ids(tmp_path) == {"a", "c"}
    assert finished_ids(tmp_path / "missing") == set()


def test_bad_arguments_fail_before_ray_runs(tmp_path):
    with pytest.raises(InvalidInputError, match="nope"):
        align_dataset(["hi"], tmp_path, strategy="nope")
    with pytest.raises(ValueError, match="n"):
        align_dataset(["hi"], tmp_path, settings={"n": 0})
    with pytest.raises(InvalidInputError, match="output_format"):
        align_dataset(["hi"], tmp_path, output_format="csv")
