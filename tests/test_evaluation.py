"""The evaluation harness: specs and prompt files fail early, results resume, summaries are right."""

from __future__ import annotations

import json

import pytest

from align_chains.errors import InvalidInputError, UnknownStrategyError
from align_chains.evaluation import (
    STARTER_PROMPTS,
    EvalPrompt,
    bon_kl_bound,
    bon_win_ceiling,
    bootstrap_ci,
    evaluate,
    load_prompts,
    parse_spec,
    parse_specs,
    per_prompt_compute,
    plot_curves,
)
from align_chains.evaluation.rewards import distinct_bigrams, load_eval_reward
from align_chains.rewards import CallableReward

PROMPTS = [
    EvalPrompt("fruit", [{"role": "user", "content": "Name a fruit."}]),
    EvalPrompt("terse", [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]),
    EvalPrompt("story", [{"role": "user", "content": "Tell me a story."}]),
]


# -- prompt files ---------------------------------------------------------------------------
def test_starter_set_loads():
    prompts = load_prompts(STARTER_PROMPTS)
    assert 16 <= len(prompts) <= 24
    assert len({p.id for p in prompts}) == len(prompts)
    assert any(p.messages[0]["role"] == "system" for p in prompts)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "ok"}', "{not json"], ":2 is not valid JSON"),
        (['{"prompt": "a", "messages": []}'], 'exactly one of "prompt"'),
        (['{"text": "a"}'], 'exactly one of "prompt"'),
        (['{"messages": [{"role": "narrator", "content": "x"}]}'], "role 'narrator'"),
        (['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'], "used twice"),
        (['{"prompt": "  "}'], "is empty"),
        (["[1, 2]"], "expected a JSON object"),
        ([""], "has no prompts"),
    ],
)
def test_bad_prompt_files_fail_naming_the_line(tmp_path, lines, message):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
        load_prompts(path)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")


# -- strategy specs -------------------------------------------------------------------------
def test_spec_values_expand_to_a_grid():
    settings = parse_spec("best-of-n:n=4,8,16")
    assert [s.label for s in settings] == ["n=4", "n=8", "n=16"]
    assert [s.fields["n"] for s in settings] == [4, 8, 16]
    grid = parse_spec("sea:chains=1,2:iterations=3,4")
    assert [s.label for s in grid] == [
        "chains=1,iterations=3", "chains=1,iterations=4", "chains=2,iterations=3", "chains=2,iterations=4",
    ]  # fmt: skip
    assert parse_spec("args")[0].strategy == "reward-guided"


def test_adaptive_spec_spends_n_as_its_budget():
    (setting,) = parse_spec("adaptive:n=8")
    assert setting.strategy == "adaptive-best-of-n"
    model = setting.build()
    assert model.allocation == "adaptive" and model.budget == 8


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("beam-me-up", UnknownStrategyError, "Unknown strategy 'beam-me-up'"),
        ("best-of-n:beams=3", InvalidInputError, "unknown setting"),
        ("best-of-n:n=0", InvalidInputError, "n=0"),
        ("sea:iterations=0", InvalidInputError, "iterations=0"),
        ("best-of-n:n", InvalidInputError, "expected KEY=V1,V2"),
        ("best-of-n:seed=3", InvalidInputError, "unknown setting"),
    ],
)
def test_bad_specs_fail_on_parsing(spec, error, message):
    with pytest.raises(error, match=message):
        parse_spec(spec)


def test_duplicate_settings_are_refused():
    with pytest.raises(InvalidInputError, match="given twice"):
        parse_specs(["best-of-n:n=2,4", "best-of-n:n=4"])


def test_bad_input_fails_before_any_model_loads(no_eval_loading, tmp_path):
    with pytest.raises(UnknownStrategyError):
        evaluate(["best-of-n:n=2", "nope"], PROMPTS, json_path=tmp_path / "r.json")
    with pytest.raises(InvalidInputError, match="Unknown rule"):
        evaluate(["best-of-n:n=2"], PROMPTS, holdout="rule:nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:2"):
        evaluate(["best-of-n:n=2"], bad)
    assert not (tmp_path / "r.json").exists()


# -- statistics -----------------------------------------------------------------------------
def test_bootstrap_interval_brackets_the_mean():
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    low, high = bootstrap_ci(values)
    assert low < 3.5 < high
    assert bootstrap_ci([2.0]) == (2.0, 2.0)
    assert bootstrap_ci([1.0] * 5) == (1.0, 1.0)


def test_best_of_n_ceilings():
    assert bon_win_ceiling(1) == 0.5 and bon_win_ceiling(32) == pytest.approx(32 / 33)
    assert bon_kl_bound(1) == 0.0
    assert bon_kl_bound(4) == pytest.approx(1.386294 - 0.75, abs=1e-6)


def test_batched_work_is_shared_between_prompts():
    compute = {
        "prompt_tokens": 20, "generated_tokens": 30, "forward_passes": 12, "reward_calls": 2,
        "reward_items": 8, "seconds": 4.0, "batch_size": 4,
    }  # fmt: skip
    own = per_prompt_compute(compute, input_tokens=20)
    assert own == {
        "generated_tokens": 30,
        "reward_items": 8,
        "forward_passes": 3,
        "reward_calls": 0.5,
        "seconds": 1.0,
    }
    whole = per_prompt_compute({**compute, "prompt_tokens": 80}, input_tokens=20)  # counters of the batch
    assert whole["generated_tokens"] == 7.5 and whole["reward_items"] == 2
    # DARWIN: its prompt_tokens include its mutation prompts, but its counters are each prompt's own
    # (they differ between the prompts of a batch): its tokens are not divided
    darwin = per_prompt_compute({**compute, "prompt_tokens": 80}, input_tokens=20, uniform=False)
    assert darwin["generated_tokens"] == 30 and darwin["seconds"] == 1.0


def test_rule_rewards():
    assert distinct_bigrams("q", "the cat sat on the mat") == 1.0
    assert distinct_bigrams("q", "no no no no") == pytest.approx(1 / 3)
    assert distinct_bigrams("q", "") == 0.0
    lexicon = load_eval_reward("lexicon:because,step", policy=None)
    assert lexicon.score(["q", "q"], ["Step one, because.", "nothing"]) == [1.0, 0.0]


# -- a run on the tiny policy -----------------------------------------------------------------
def test_evaluate_writes_results_resumes_and_plots(tiny_policy, tmp_path):
    length = CallableReward(lambda p, r: float(len(r)), name="length")
    path = tmp_path / "results.json"
    report = evaluate(
        ["best-of-n:n=2,4", "adaptive:n=2"], PROMPTS, policy=tiny_policy, reward=length,
        holdout="rule:distinct", max_tokens=6, batch_size=2, json_path=path, show_progress=False,
    )  # fmt: skip
    data = json.loads(path.read_text())
    keys = ["plain", "best-of-n:n=2", "best-of-n:n=4", "adaptive-best-of-n:n=2"]
    assert data["config"]["strategies"] == keys
    assert sorted((c["key"], c["prompt"]) for c in data["cells"]) == sorted(
        (k, p.id) for k in keys for p in PROMPTS
    )
    rows = {r["key"]: r for r in data["summary"]}
    plain = {c["prompt"]: c for c in data["cells"] if c["key"] == "plain"}
    for cell in data["cells"]:
        assert cell["reward"] == float(len(cell["text"]))  # re-scored by the optimised reward
        assert cell["holdout"] == distinct_bigrams("", cell["text"])
        assert cell["per_prompt"]["generated_tokens"] == cell["compute"]["generated_tokens"]
    best4 = [c for c in data["cells"] if c["key"] == "best-of-n:n=4"]
    wins = [
        1.0
        if c["reward"] > plain[c["prompt"]]["reward"]
        else 0.5
        if c["reward"] == plain[c["prompt"]]["reward"]
        else 0.0
        for c in best4
    ]
    assert rows["best-of-n:n=4"]["win_rate"]["mean"] == pytest.approx(sum(wins) / 3)
    assert rows["plain"]["win_rate"]["mean"] == 0.5  # against itself: all ties
    # Best-of-4 spends more tokens than Best-of-2, which spends more than one sample
    tokens = [rows[k]["compute"]["generated_tokens"] for k in ("plain", "best-of-n:n=2", "best-of-n:n=4")]
    assert tokens[0] < tokens[1] < tokens[2]
    assert report.table().count("\n") == 1 + len(keys)

    # resume: finished cells are skipped (no forward pass at all), a new setting runs alone
    calls = []
    hook = tiny_policy.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        evaluate(
            ["best-of-n:n=2,4", "adaptive:n=2"], PROMPTS, policy=tiny_policy, reward=length,
            holdout="rule:distinct", max_tokens=6, batch_size=2, json_path=path, show_progress=False,
        )  # fmt: skip
        assert calls == []
        again = evaluate(
            ["best-of-n:n=2,4,8"], PROMPTS, policy=tiny_policy, reward=length, holdout="rule:distinct",
            max_tokens=6, batch_size=3, json_path=path, show_progress=False, plot_path=tmp_path / "c.png",
        )  # fmt: skip
    finally:
        hook.remove()
    assert len(calls) > 0
    assert len([c for c in again.cells if c["key"] == "best-of-n:n=8"]) == 3
    assert (tmp_path / "c.png").stat().st_size > 10_000
    with pytest.raises(InvalidInputError, match="max_tokens"):
        evaluate(
            ["best-of-n:n=2"], PROMPTS, policy=tiny_policy, reward=length, holdout="rule:distinct",
            max_tokens=7, json_path=path, show_progress=False,
        )  # fmt: skip


def test_plot_has_a_curve_per_strategy(tmp_path):
    def row(strategy, settings, tokens, reward):
        stat = {"mean": reward, "ci": [reward - 0.1, reward + 0.1]}
        compute = {"generated_tokens": tokens, "seconds": tokens / 10, "forward_passes": 1.0}
        return {"strategy": strategy, "settings": settings, "reward": stat, "holdout": stat,
                "win_rate": {"mean": 0.6, "ci": [0.5, 0.7]}, "compute": compute}  # fmt: skip

    summary = [
        row("plain", {}, 10, 0.0),
        row("best-of-n", {"n": 4}, 40, 0.5),
        row("best-of-n", {"n": 16}, 160, 0.8),
        row("early-rejection", {"n": 16}, 50, 0.7),
    ]
    fig = plot_curves(summary, tmp_path / "p.png")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["plain", "best-of-n", "early-rejection"]
    ceiling = [line for line in fig.axes[3].lines if line.get_label() == "Best-of-n ceiling n/(n+1)"]
    assert list(ceiling[0].get_ydata()) == pytest.approx([0.5, 0.8, 16 / 17])


def test_early_rejection_spec_runs_through_best_of_n_chat_model():
    from align_chains import BestOfNChatModel
    from align_chains.strategies import EarlyRejectionBestOfN

    (default,) = parse_spec("early-rejection")
    assert default.chat_model is BestOfNChatModel
    strategy = default.build().build_strategy()
    assert isinstance(strategy, EarlyRejectionBestOfN) and strategy.n == 32 and strategy.rejection == 0.75
    (tuned,) = parse_spec("speculative-rejection:n=8:rejection=0.5:decision_every=4")
    assert tuned.build().build_strategy() == EarlyRejectionBestOfN(n=8, rejection=0.5, decision_every=4)
