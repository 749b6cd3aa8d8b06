"""The report's Python side: results files are checked with clear errors, statistics match scipy,
cells keep candidates and traces within their caps, and the data is embedded safely.

What the page does with the data is tested in a real browser in test_report_browser.py.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import stats

from align_chains.cli import main
from align_chains.engine import ComputeCounters
from align_chains.evaluation.cell_details import (
    MAX_CANDIDATES,
    MAX_TEXT_CHARS,
    MAX_TRACE_RECORDS,
    cell_details,
)
from align_chains.evaluation.report import EvalFileError, compare, load_eval_file, write_report
from align_chains.evaluation.report.data import page_data
from align_chains.evaluation.report.html import embed_json
from align_chains.strategies.base import Candidate, StrategyResult
from align_chains.testing import synthetic_eval_results


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(synthetic_eval_results(6, 3, seed=1)))
    return path


# -- reading a results file -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ('{"version": 1, "config": {}, "cells": [{"key"', "the JSON is cut off"),
        ('{"version": 1} trailing', "not valid JSON"),
        ("[1, 2]", "not an align-chains eval results file"),
        ('{"version": 9, "config": {}, "prompts": [], "cells": []}', "version 9 is not one"),
        ('{"version": 1, "config": {}, "cells": []}', "prompts: Field required"),
        (
            '{"version": 1, "config": {}, "prompts": [], "cells": '
            '[{"key": "a", "prompt": "p", "text": "x", "reward": "high", "holdout": 1}]}',
            r"cells\[0\]\.reward: Input should be a valid number",
        ),
    ],
)
def test_a_file_the_report_cannot_read_is_refused_naming_file_problem_and_fix(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(EvalFileError, match=message) as error:
        load_eval_file(path)
    assert str(path) in str(error.value)
    assert "align-chains eval" in str(error.value)  # the fix names the command that writes the file


def test_truncating_a_real_file_anywhere_gives_the_cut_off_error(results):
    text = results.read_text()
    for cut in (len(text) // 3, len(text) // 2, len(text) - 2):
        results.write_text(text[:cut])
        with pytest.raises(EvalFileError, match="cut off"):
            load_eval_file(results)


def test_view_command_exits_2_with_the_message_and_writes_nothing(tmp_path, capsys):
    broken = tmp_path / "eval.json"
    broken.write_text('{"version": 1, "config": {"strategies": ["plain"]}, "prompts": [')
    assert main(["view", str(broken), "--no-open"]) == 2
    err = capsys.readouterr().err
    assert "eval.json: the JSON is cut off" in err and "align-chains eval --json" in err
    assert not (tmp_path / "eval.html").exists()
    assert main(["view", str(tmp_path / "missing.json"), "--no-open"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_view_writes_the_page_next_to_the_file(results, capsys, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert main(["view", str(results)]) == 0
    page = results.with_suffix(".html")
    assert page.is_file() and opened == [page.resolve().as_uri()]
    assert (
        main(["view", str(results), str(results), "-o", str(results.parent / "two.html"), "--no-open"]) == 0
    )
    assert "report: " in capsys.readouterr().out and (results.parent / "two.html").is_file()


def test_non_finite_numbers_become_null(tmp_path):
    data = synthetic_eval_results(2, 2)
    data["cells"][0]["holdout"] = float("nan")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(data))  # Python writes NaN, which JSON.parse cannot read
    assert load_eval_file(path)["cells"][0]["holdout"] is None
    write_report([path], tmp_path / "nan.html")
    assert "NaN" not in (tmp_path / "nan.html").read_text()


# -- the embedded data ------------------------------------------------------------------------
def test_embedded_json_cannot_close_its_script_element():
    hostile = {"text": "</script><script>alert(1)</script><!-- & \u2028"}
    embedded = embed_json(hostile)
    assert "<" not in embedded and ">" not in embedded and "&" not in embedded
    assert json.loads(embedded) == hostile


def test_page_is_self_contained(results, tmp_path):
    page = write_report([results], tmp_path / "r.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loaded from a network
    assert "<script src" not in page and '<link rel="stylesheet"' not in page
    assert page.count('<script type="application/json"') == 2


# -- statistics -------------------------------------------------------------------------------
def test_paired_statistics_match_scipy():
    rng = np.random.default_rng(4)
    for n in (7, 14, 60):
        a = rng.normal(size=n)
        b = a + rng.normal(0.3, 1.0, size=n)
        (result,) = compare([(list(a), list(b))])
        d = a - b
        assert (
            result["n"] == n
            and result["wins"] == int(np.sum(d > 0))
            and result["mean"] == pytest.approx(d.mean())
        )
        exact = n <= 16
        reference = stats.permutation_test(
            (d,), np.mean, permutation_type="samples", n_resamples=np.inf if exact else 50_000, random_state=0
        )
        assert result["p"] == pytest.approx(reference.pvalue, abs=1e-12 if exact else 0.02)
        boot = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=20_000, random_state=0)
        low, high = boot.confidence_interval
        width = high - low
        assert result["low"] == pytest.approx(low, abs=0.1 * width)
        assert result["high"] == pytest.approx(high, abs=0.1 * width)


def test_pairs_use_only_prompts_both_sides_have():
    (result,) = compare([([1.0, None, 3.0, 5.0], [0.0, 2.0, None, 5.0])])
    assert result["n"] == 2 and result["wins"] == 1 and result["ties"] == 1 and result["mean"] == 0.5
    assert compare([([None], [1.0])]) == [None]
    (same,) = compare([([1.0, 2.0], [1.0, 2.0])])
    assert same["p"] == 1.0 and same["mean"] == 0.0


def test_two_runs_are_compared_on_shared_settings_and_prompts(tmp_path):
    a, b = synthetic_eval_results(5, 3, seed=1), synthetic_eval_results(5, 2, seed=2)
    b["prompts"][4]["messages"][0]["content"] = "a different question"  # same id, other text: not compared
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    core, details = page_data([tmp_path / "a.json", tmp_path / "b.json"])
    comparison = core["comparison"]
    assert comparison["settings"] == ["plain", "best-of-n:n=2"]
    assert core["changed_prompts"] == ["q0004"]
    stat = next(
        st for key, metric, st in comparison["stats"] if key == "best-of-n:n=2" and metric == "reward"
    )
    reward = {(r, c["key"], c["prompt"]): c["reward"] for r, run in enumerate((a, b)) for c in run["cells"]}
    deltas = [
        reward[1, "best-of-n:n=2", f"q{i:04d}"] - reward[0, "best-of-n:n=2", f"q{i:04d}"] for i in range(4)
    ]
    assert stat["n"] == 4 and stat["mean"] == pytest.approx(np.mean(deltas))
    assert len(details) == 2 and len(details[0]) == 15 and "candidates" in details[0][0]


V1_CELL_KEYS = {"key", "strategy", "settings", "prompt", "text", "reward", "holdout", "strategy_reward"}
V1_CELL_KEYS |= {"compute", "per_prompt"}


def test_a_file_from_before_candidates_and_task_fields_still_reads(tmp_path):
    data = synthetic_eval_results(3, 2)
    for cell in data["cells"]:
        for key in set(cell) - V1_CELL_KEYS:
            del cell[key]
    (tmp_path / "v1.json").write_text(json.dumps(data))
    core, details = page_data([tmp_path / "v1.json"])
    assert core["runs"][0]["metrics"] == ["reward", "holdout"]
    assert details[0][0] == {"strategy": "plain", "settings": {}, "compute": data["cells"][0]["compute"],
                             "per_prompt": data["cells"][0]["per_prompt"]}  # fmt: skip


# -- what a cell keeps ------------------------------------------------------------------------
def test_cells_keep_the_chosen_and_best_candidates_within_the_caps():
    n = MAX_CANDIDATES + 8
    candidates = [
        Candidate(text=("x" * (MAX_TEXT_CHARS + 50)) if i == 3 else f"answer {i}", reward=float(i % 10),
                  token_ids=[1] * (i + 1), logprobs=[0.0] * (i + 1), finish_reason="length")
        for i in range(n)
    ]  # fmt: skip
    trace = [{"event": "step", "i": i, "values": list(range(1000))} for i in range(MAX_TRACE_RECORDS + 5)]
    result = StrategyResult(
        strategy="toy", text="answer 3", reward=3.0, candidates=candidates, best_index=3, prompt_tokens=4,
        counters=ComputeCounters(), trace=trace, details={"nan": float("nan"), "array": np.float32(0.5)},
    )  # fmt: skip
    kept = cell_details(result)
    assert kept["candidates_total"] == n and len(kept["candidates"]) == MAX_CANDIDATES
    chosen = [c for c in kept["candidates"] if c["chosen"]]
    assert [c["index"] for c in chosen] == [3] and kept["chosen_index"] == 3
    assert len(chosen[0]["text"]) == MAX_TEXT_CHARS and chosen[0]["text_chars"] == MAX_TEXT_CHARS + 50
    others = [c["reward"] for c in kept["candidates"] if not c["chosen"]]
    dropped = sorted(
        c.reward for i, c in enumerate(candidates) if i not in {k["index"] for k in kept["candidates"]}
    )
    assert min(others) >= max(dropped)  # the best-rewarded are kept
    assert kept["candidate_rewards"] == [c.reward for c in candidates]
    assert len(kept["trace"]) == MAX_TRACE_RECORDS and kept["trace_total"] == MAX_TRACE_RECORDS + 5
    assert len(kept["trace"][0]["values"]) < 1000
    assert kept["details"] == {"nan": None, "array": 0.5}
    json.dumps(kept, allow_nan=False)
