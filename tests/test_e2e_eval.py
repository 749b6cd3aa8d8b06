"""``align-chains eval`` end to end on the embedded defaults: a tiny prompt file -> JSON and PNG."""

from __future__ import annotations

import json

import pytest

from align_chains.cli import main

pytestmark = pytest.mark.e2e


def test_eval_cli_writes_json_and_plot(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"id": "sleep", "prompt": "Give me three tips for better sleep."}\n'
        '{"id": "capital", "prompt": "What is the capital of France?"}\n'
    )
    results, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    argv = [
        "eval", "--prompts", str(prompts), "--strategies", "best-of-n:n=2",
        "early-rejection:n=4:rejection=0.5:decision_every=4", "--max-tokens", "8",
        "--json", str(results), "--plot", str(plot), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| early-rejection | n=4,rejection=0.5,decision_every=4 |" in out
    data = json.loads(results.read_text())
    assert {c["key"] for c in data["cells"]} == {
        "plain", "best-of-n:n=2", "early-rejection:n=4,rejection=0.5,decision_every=4",
    }  # fmt: skip
    assert len(data["cells"]) == 6 and not data["errors"]
    for row in data["summary"]:
        assert row["prompts"] == 2
        assert row["compute"]["generated_tokens"] > 0 and row["compute"]["seconds"] > 0
    early = next(r for r in data["summary"] if r["strategy"] == "early-rejection")
    assert early["compute"]["reward_calls"] >= 1
    assert plot.stat().st_size > 10_000
    # a second run resumes: nothing left to do, same cells
    assert main(argv) == 0
    assert len(json.loads(results.read_text())["cells"]) == 6
