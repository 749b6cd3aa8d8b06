"""Per-line rewards in ``align-chains eval``: validated before any model loads, scored per prompt,
with the task's success test and the fluency gate in every cell and in the summary."""

from __future__ import annotations

import json

import pytest

from align_chains.errors import InvalidInputError
from align_chains.evaluation import evaluate, load_prompts
from align_chains.evaluation.fluency import NLL_FLOOR, NLL_MARGIN
from align_chains.evaluation.report.data import page_data
from align_chains.tasks import FAMILIES, instances

VERIFIER = """
def exact(response, fields):
    return fields["expected"] in response

def wrong(response):
    return 1.0
"""


@pytest.fixture
def verifier(tmp_path, monkeypatch):
    (tmp_path / "my_checks.py").write_text(VERIFIER)
    monkeypatch.syspath_prepend(str(tmp_path))


def write(tmp_path, lines):
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ({"family": "nope"}, r'tasks\.jsonl:2: "reward" needs "family", one of'),
        ({"family": "keywords", "words": "dog"}, r'tasks\.jsonl:2: .*"words": a non-empty list'),
        ({"family": "length", "n": "ten"}, r'tasks\.jsonl:2: .*needs "n" \(int\), e\.g\. "n": 12'),
        ({"family": "sentiment", "tone": "angry"}, r'"tone": "positive" or "negative"'),
        ("python:no_such_module_xyz:fn", r"tasks\.jsonl:2: .*cannot import module"),
        ("python:my_checks:wrong", r"tasks\.jsonl:2: verifier .* must take \(response, fields\)"),
        ("judge", r'tasks\.jsonl:2: "reward" must be \{"family": NAME'),
    ],
)
def test_a_bad_line_reward_fails_before_any_model_loads(no_eval_loading, verifier, tmp_path, reward, message):
    path = write(tmp_path, [{"prompt": "ok"}, {"prompt": "Write.", "reward": reward}])
    with pytest.raises(InvalidInputError, match=message):
        evaluate(["best-of-n:n=2"], path, json_path=tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_other_line_problems_fail_before_any_model_loads(no_eval_loading, tmp_path):
    path = write(tmp_path, [{"prompt": "Hi", "expected": "x"}])  # a field only a verifier could read
    with pytest.raises(InvalidInputError, match=r'other fields need a "reward"'):
        evaluate(["best-of-n:n=2"], path)
    same = {"prompt": "Use these words.", "reward": {"family": "keywords", "words": ["dog"]}}
    other = {**same, "reward": {"family": "keywords", "words": ["cat"]}}
    with pytest.raises(InvalidInputError, match="same messages but different rewards"):
        evaluate(["best-of-n:n=2"], write(tmp_path, [same, other]))


def test_generated_instances_load_as_a_prompt_file(tmp_path):
    lines = [line for name in FAMILIES for line in instances(name, "test", 2)]
    prompts = load_prompts(write(tmp_path, lines))
    assert [p.as_dict()["task"] for p in prompts] == [line["reward"] for line in lines]
    assert {p.split for p in prompts} == {"test"}


def test_eval_scores_each_line_by_its_own_reward_with_success_and_the_gate(tiny_policy, verifier, tmp_path):
    lines = [
        *instances("keywords", "dev", 2),
        {"id": "maths", "prompt": "What is 2 + 2?", "reward": "python:my_checks:exact", "expected": "4"},
    ]
    path = tmp_path / "r.json"
    report = evaluate(
        ["best-of-n:n=2", "reward-guided:k=2"], write(tmp_path, lines), policy=tiny_policy,
        holdout="rule:distinct", max_tokens=6, batch_size=3, json_path=path, show_progress=False,
    )  # fmt: skip
    data = json.loads(path.read_text())
    assert data["version"] == 2 and data["config"]["reward"] == "per-prompt"
    params = {line["id"]: line["reward"] for line in lines}
    plain_nll = {c["prompt"]: c["fluency"]["nll"] for c in data["cells"] if c["key"] == "plain"}
    for cell in data["cells"]:
        spec = params[cell["prompt"]]
        if isinstance(spec, dict):
            family, p = FAMILIES[spec["family"]], {k: v for k, v in spec.items() if k != "family"}
            assert cell["reward"] == cell["task_reward"] == family.reward(p, cell["text"])
            assert cell["constraint_met"] == family.success(p, cell["text"])
        else:
            assert cell["constraint_met"] == ("4" in cell["text"])
            assert cell["reward"] == float(cell["constraint_met"])
        gate = cell["fluency"]
        assert gate["reference_nll"] == plain_nll[cell["prompt"]]
        limit = max(NLL_FLOOR, gate["reference_nll"] + NLL_MARGIN)
        too_far = gate["nll"] is not None and gate["nll"] > limit
        assert cell["fluent"] == (gate["tokens"] > 0 and not too_far and gate["repetition"] <= 0.25)
        assert cell["success"] == (cell["constraint_met"] and cell["fluent"])
    rows = {r["key"]: r for r in data["summary"]}
    successes = [c["success"] for c in data["cells"] if c["key"] == "reward-guided:k=2"]
    assert rows["reward-guided:k=2"]["success_rate"]["mean"] == pytest.approx(sum(successes) / 3)
    assert "fluent_rate" in rows["plain"] and report.prompts[0].split == "dev"
    core, _ = page_data([path])  # the report reads the task fields (its filters need them)
    assert any(c.get("constraint_met") is not None for c in core["runs"][0]["cells"])
