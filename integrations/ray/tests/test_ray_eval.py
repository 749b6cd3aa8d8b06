"""``align-chains eval --ray`` on a local 2-CPU cluster with the tiny policy: the results file is
the local run's (same cells, answers and rewards), and a cut-off run resumes its missing cells only."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from align_chains_ray.evaluation import run_on_ray

from align_chains import cli
from align_chains.errors import InvalidInputError
from align_chains.evaluation import evaluate

PROMPTS = [{"id": f"q{i}", "prompt": f"Question {i}: say something."} for i in range(3)]
COMMON = ["--strategies", "best-of-n:n=2", "--reward", "rule:distinct", "--holdout-reward", "lexicon:the,a"]
COMMON += ["--max-tokens", "5", "--batch-size", "2", "--seed", "0", "--quiet"]
TIMING = ("seconds",)  # wall time differs between two runs of the same work


def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def comparable(results: Path) -> list[dict]:
    """The cells without their wall times."""
    cells = json.loads(results.read_text())["cells"]
    for cell in cells:
        for part in ("compute", "per_prompt"):
            for key in TIMING:
                cell[part].pop(key, None)
    return cells


def ray_entry_point(monkeypatch) -> None:
    """The entry point integrations/ray/pyproject.toml declares, as an install registers it."""
    point = EntryPoint("ray", "align_chains_ray.evaluation:cli_runner", cli.EVAL_RUNNERS_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group, name: [point] if group == point.group else [])


def test_eval_on_ray_writes_the_local_runs_results(ray_cluster, ray_policy_dir, tmp_path, monkeypatch):
    prompts = prompt_file(tmp_path)
    args = ["eval", "--prompts", str(prompts), "--policy", str(ray_policy_dir), *COMMON]
    assert cli.main([*args, "--json", str(tmp_path / "local.json")]) == 0
    ray_entry_point(monkeypatch)
    assert cli.main([*args, "--json", str(tmp_path / "ray.json"), "--ray"]) == 0
    local, on_ray = comparable(tmp_path / "local.json"), comparable(tmp_path / "ray.json")
    assert len(local) == 2 * len(PROMPTS)  # the plain sample and Best-of-2, on every prompt
    assert on_ray == local
    assert {c["key"] for c in on_ray} == {"plain", "best-of-n:n=2"}


def test_a_cut_off_ray_eval_resumes_only_its_missing_chunks(ray_cluster, ray_policy_dir, tmp_path):
    path = tmp_path / "eval.json"
    kwargs = dict(
        policy=str(ray_policy_dir),
        reward="rule:distinct",
        holdout="lexicon:the,a",
        max_tokens=5,
        batch_size=2,
        json_path=path,
        show_progress=False,
    )
    ray_runner, ran = run_on_ray(actors=2), []

    def counting(todo, job):
        ran.append(sum(len(pending) for _, pending in todo))
        yield from ray_runner(todo, job)

    prompts = [evaluate_prompt(p) for p in PROMPTS]
    whole = evaluate(["best-of-n:n=2"], prompts, runner=counting, **kwargs)
    assert ran == [6] and not whole.errors
    full = json.loads(path.read_text())
    cut = {**full, "cells": full["cells"][:3]}  # as if the run stopped after three cells
    path.write_text(json.dumps(cut))
    again = evaluate(["best-of-n:n=2"], prompts, runner=counting, **kwargs)
    assert ran == [6, 3]  # only the missing cells ran
    assert sorted((c["key"], c["prompt"]) for c in again.cells) == sorted(
        (c["key"], c["prompt"]) for c in full["cells"]
    )


def test_eval_on_ray_refuses_a_loaded_policy_and_names_the_install_when_missing(monkeypatch, tmp_path):
    from align_chains.testing import tiny_policy

    runner = run_on_ray()
    with pytest.raises(InvalidInputError, match="policy as a spec"):
        evaluate(["best-of-n:n=2"], [evaluate_prompt(PROMPTS[0])], policy=tiny_policy(), runner=runner,
                 reward="rule:distinct", holdout="rule:distinct", show_progress=False)  # fmt: skip
    monkeypatch.setattr(cli, "entry_points", lambda group, name: [])
    prompts = prompt_file(tmp_path)
    assert cli.main(["eval", "--prompts", str(prompts), *COMMON, "--ray"]) == 2


def evaluate_prompt(record: dict):
    from align_chains.evaluation import EvalPrompt

    return EvalPrompt(record["id"], [{"role": "user", "content": record["prompt"]}])
