"""The report page in a real headless Chromium (Debian's ``chromium`` through Playwright).

The page is generated from a small real evaluation on the tiny models (every strategy with a
trace: Best-of-N, early rejection, adaptive Best-of-N, DARWIN, SEA), and from a second run for
the run comparison. Checked: no console errors and no network; the summary numbers are the
JSON's; each filter shows the right rows; the paired comparison equals scipy's; the details
panel shows the chosen candidate and the strategy's record; the run comparison's deltas; text
from the data is never markup; keyboard use; light and dark; and a 2,000 x 12 report becomes
interactive within BOUND_S.

The browser is started once for this module (the only one that uses it): Playwright's sync API
keeps an event loop for as long as it runs, which would stop the asyncio tests of other modules.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from align_chains.evaluation import EvalPrompt, evaluate
from align_chains.evaluation.report import write_report
from align_chains.evaluation.stats import bootstrap_ci
from align_chains.rewards import JudgeReward
from align_chains.testing import synthetic_eval_results

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHROMIUM_ARGS += ["--disable-component-update", "--disable-sync", "--no-first-run"]
BOUND_S = 10.0
"""A 2,000-prompt x 12-setting report must be interactive within this (measured: see docs/evaluation.md)."""
PROMPTS = [
    EvalPrompt(f"p{i}", [{"role": "user", "content": f"Question {i}: name a fruit."}]) for i in range(6)
]
SPECS = ["best-of-n:n=2,4", "early-rejection:n=4:rejection=0.5:decision_every=2", "adaptive:n=2",
         "darwin:n=2:k=1:cycles=1:m=4", "sea:chains=1:iterations=2"]  # fmt: skip
HOSTILE = '<img src=x onerror="window.__xss=1"></script><script>window.__xss=2</script> & <b>bold</b>'


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install it with the README's install command (apt-get install chromium)."
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_policy):
    """Two real evaluations on the tiny policy (B: another seed, fewer settings) and variants of A."""
    folder = tmp_path_factory.mktemp("report")
    judge = JudgeReward(tiny_policy, principle="Be helpful.")
    common = {"policy": tiny_policy, "reward": judge, "holdout": "rule:distinct", "max_tokens": 8,
              "batch_size": 3, "show_progress": False}  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-layer model: threads only contend (6x slower on a busy 2-core machine)
    try:
        evaluate(SPECS, PROMPTS, json_path=folder / "a.json", **common)
        evaluate(["best-of-n:n=2,4"], PROMPTS, seed=1, json_path=folder / "b.json", **common)
    finally:
        torch.set_num_threads(threads)
    a = json.loads((folder / "a.json").read_text())
    (folder / "tasks.json").write_text(json.dumps(with_task_fields(a)))
    old = {**a, "cells": [{k: c[k] for k in V1_KEYS} for c in a["cells"]]}
    (folder / "v1.json").write_text(json.dumps(old))
    last = a["config"]["strategies"][-1]  # as written while the last setting still runs
    partial = {**a, "cells": [c for c in a["cells"] if c["key"] != last or c["prompt"] == "p0"]}
    partial["summary"] = [row for row in a["summary"] if row["key"] != last]
    (folder / "partial.json").write_text(json.dumps(partial))
    pages = {
        "partial": write_report([folder / "partial.json"], folder / "partial.html"),
        "a": write_report([folder / "a.json"], folder / "a.html"),
        "ab": write_report([folder / "a.json", folder / "b.json"], folder / "ab.html"),
        "tasks": write_report([folder / "tasks.json"], folder / "tasks.html"),
        "v1": write_report([folder / "v1.json"], folder / "v1.html"),
    }
    data = {name: json.loads((folder / f"{name}.json").read_text()) for name in ("a", "b", "tasks")}
    return pages, data


V1_KEYS = ("key", "strategy", "settings", "prompt", "text", "reward", "holdout", "strategy_reward", "compute",
           "per_prompt")  # fmt: skip


def with_task_fields(data: dict) -> dict:
    """The file as the task families write it (the JSON contract), with one hostile answer."""
    data = json.loads(json.dumps(data))
    data["version"] = 2
    for i, prompt in enumerate(data["prompts"]):
        prompt["task"] = {"family": "keywords", "params": {"words": ["fruit"]}}
        prompt["split"] = "dev" if i % 2 else "test"
    for k, cell in enumerate(data["cells"]):
        cell["constraint_met"] = k % 3 != 0
        cell["fluent"] = k % 4 != 1
        cell["success"] = cell["constraint_met"] and cell["fluent"]
        cell["task_reward"] = (k % 5) / 4
    data["cells"][7]["text"] = HOSTILE
    data["cells"][7]["candidates"][0]["text"] = HOSTILE
    for row in data["summary"]:
        own = [c for c in data["cells"] if c["key"] == row["key"]]
        for field, rate in (
            ("success", "success_rate"),
            ("constraint_met", "constraint_rate"),
            ("fluent", "fluent_rate"),
        ):
            mean = float(np.mean([c[field] for c in own]))
            row[rate] = {
                "mean": mean,
                "low": max(0.0, mean - 0.2),
                "high": min(1.0, mean + 0.2),
                "n": len(own),
            }
    return data


@pytest.fixture
def open_page(browser):
    """Open a report page; after the test, no console error and no request left the file."""
    opened = []

    def _open(path: Path, scheme: str = "light"):
        page = browser.new_page(color_scheme=scheme, viewport={"width": 1300, "height": 900})
        problems: list[str] = []
        page.on(
            "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(r.url))
        page.goto(path.as_uri())
        page.wait_for_function("document.documentElement.dataset.ready === '1'", timeout=30_000)
        opened.append((page, problems))
        return page

    yield _open
    for page, problems in opened:
        assert problems == []
        page.close()


def rows(page) -> list[str]:
    return page.eval_on_selector_all("#grid tbody tr[data-prompt]", "rows => rows.map(r => r.dataset.prompt)")


def cells_of(data: dict) -> dict[tuple[str, str], dict]:
    return {(c["key"], c["prompt"]): c for c in data["cells"]}


def choose_filter(page, name: str) -> None:
    page.check(f'#filters label[data-filter="{name}"] input')


# -- the page ---------------------------------------------------------------------------------
def test_every_page_loads_offline_without_console_errors(runs, open_page):
    pages, data = runs
    for name, path in pages.items():
        page = open_page(path)
        assert page.title().startswith("align-chains eval report")
        assert page.locator("#grid tbody tr[data-prompt]").count() == len(PROMPTS), name
    assert "complete" in open_page(pages["a"]).text_content("#status-0")
    partial = open_page(pages["partial"])
    total = len(PROMPTS) * len(data["a"]["config"]["strategies"])
    assert f"{total - len(PROMPTS) + 1} of {total} answers" in partial.text_content("#status-0")
    assert partial.locator("#grid td.missing").count() == len(PROMPTS) - 1


def test_summary_numbers_are_the_json_numbers(runs, open_page):
    pages, data = runs
    page = open_page(pages["tasks"])
    for row in data["tasks"]["summary"]:
        tr = page.locator(f'#summary-0 tr[data-key="{row["key"]}"]')
        values = {k: row[k]["mean"] for k in ("reward", "holdout", "win_rate", "success_rate")}
        values |= {k: row["compute"][k] for k in ("generated_tokens", "reward_calls", "seconds")}
        for field, expected in values.items():
            td = tr.locator(f'td[data-field="{field}"]')
            assert float(td.get_attribute("data-value")) == expected, (row["key"], field)
            shown = float(td.inner_text().split()[0])
            assert shown == pytest.approx(expected, abs=0.0051), (row["key"], field)  # 2-3 decimals shown
        ci = tr.locator('td[data-field="reward"] .ci').inner_text()
        assert ci == f"[{row['reward']['ci'][0]:.3f}, {row['reward']['ci'][1]:.3f}]".replace("-", "-")


def test_each_filter_shows_the_right_rows(runs, open_page):
    pages, data = runs
    tasks = data["tasks"]
    page = open_page(pages["tasks"])
    by_prompt = {p["id"]: [c for c in tasks["cells"] if c["prompt"] == p["id"]] for p in tasks["prompts"]}
    expected = {
        "constraint": [p for p, cs in by_prompt.items() if any(not c["constraint_met"] for c in cs)],
        "fluency": [p for p, cs in by_prompt.items() if any(not c["fluent"] for c in cs)],
        "disagree": [p for p, cs in by_prompt.items() if len({c["success"] for c in cs}) > 1],
        "all": list(by_prompt),
    }
    for name, ids in expected.items():
        choose_filter(page, name)
        assert rows(page) == ids, name
    cells = cells_of(tasks)
    page.select_option("#pair-a", label="best-of-n:n=4")
    page.select_option("#pair-b", label="plain")
    choose_filter(page, "abeatsb")
    beats = [p for p in by_prompt if cells["best-of-n:n=4", p]["reward"] > cells["plain", p]["reward"]]
    assert rows(page) == beats
    assert f"Showing {len(beats)} of {len(PROMPTS)} prompts" in page.text_content("#filter-note")
    choose_filter(page, "all")
    page.fill("#search", "question 3")
    page.wait_for_function("document.querySelectorAll('#grid tbody tr[data-prompt]').length === 1")
    assert rows(page) == ["p3"]
    word = cells["sea:chains=1,iterations=2", "p4"]["text"].split()[0]
    page.fill("#search", word)
    page.wait_for_timeout(300)
    assert rows(page) == [
        p for p in by_prompt if any(word.lower() in c["text"].lower() for c in by_prompt[p])
    ]


def test_filters_say_when_a_file_has_nothing_to_filter(runs, open_page):
    pages, data = runs
    page = open_page(pages["v1"])
    for name in ("constraint", "fluency"):
        choose_filter(page, name)
        assert "nothing to filter" in page.text_content("#filter-note")
        assert len(rows(page)) == len(PROMPTS)
    choose_filter(page, "disagree")  # no success test: settings disagree on beating the plain sample
    cells = cells_of(data["a"])
    keys = [k for k in data["a"]["config"]["strategies"] if k != "plain"]
    expected = []
    for p in (p.id for p in PROMPTS):
        base = cells["plain", p]["reward"]
        verdicts = {cells[k, p]["reward"] > base for k in keys if cells[k, p]["reward"] != base}
        if len(verdicts) > 1:
            expected.append(p)
    assert rows(page) == expected


def test_paired_comparison_matches_scipy(runs, open_page):
    pages, data = runs
    page = open_page(pages["a"])
    page.select_option("#pair-a", label="best-of-n:n=4")
    page.select_option("#pair-b", label="plain")
    page.select_option("#pair-metric", value="holdout")
    page.select_option("#pair-metric", value="reward")
    cells = cells_of(data["a"])
    d = np.array([cells["best-of-n:n=4", p.id]["reward"] - cells["plain", p.id]["reward"] for p in PROMPTS])

    def shown(name: str) -> float:
        return float(page.get_attribute(f"#pair-{name}", "data-value"))

    assert shown("n") == len(PROMPTS) and shown("wins") == np.sum(d > 0)
    assert shown("mean") == pytest.approx(d.mean(), abs=1e-12)
    exact = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf)
    assert shown("p") == pytest.approx(exact.pvalue, abs=1e-12)
    low, high = bootstrap_ci(d)  # the documented interval: percentile bootstrap, 2,000 resamples, seed 0
    assert (shown("low"), shown("high")) == pytest.approx((low, high), abs=1e-12)
    reference = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=20_000, random_state=0)
    assert shown("low") == pytest.approx(reference.confidence_interval.low, abs=0.15 * np.ptp(d) + 1e-9)
    text = page.text_content("#pair-text")
    assert text.startswith(f"best-of-n:n=4 beats plain on {int(np.sum(d > 0))} of {len(PROMPTS)} prompts")
    page.select_option("#pair-a", label="plain")  # the other way round: signs and wins flip
    page.select_option("#pair-b", label="best-of-n:n=4")
    assert shown("mean") == pytest.approx(-d.mean(), abs=1e-12) and shown("wins") == np.sum(d < 0)
    page.select_option("#sort", value="diff")  # sort rows by A - B, highest first
    order = sorted(range(len(PROMPTS)), key=lambda i: (d[i], i))
    assert rows(page) == [PROMPTS[i].id for i in order]


def test_details_panel_shows_the_chosen_candidate_and_the_strategy_record(runs, open_page):
    pages, data = runs
    page = open_page(pages["a"])
    cells = cells_of(data["a"])
    keys = data["a"]["config"]["strategies"]
    for key, record in [("best-of-n:n=4", None), ("darwin:n=2,k=1,cycles=1,m=4", "#darwin-archive"),
                        ("sea:chains=1,iterations=2", "text=Reward per iteration"),
                        ("early-rejection:n=4,rejection=0.5,decision_every=2", "text=Early rejection"),
                        ("adaptive-best-of-n:n=2", "text=Adaptive allocation")]:  # fmt: skip
        cell = cells[key, "p2"]
        page.click(f'td.cell[data-row="2"][data-col="{keys.index(key)}"]')
        assert page.is_visible("#panel")
        assert page.text_content("#panel-h") == f"{key} on p2"
        assert page.text_content("#chosen-answer") == cell["text"]
        chosen = page.locator('#candidate-table tr[data-chosen="true"]')
        assert chosen.count() == 1
        assert chosen.get_attribute("data-index") == str(cell["chosen_index"])
        assert cell["text"] in chosen.locator("td.text").first.text_content()
        assert page.locator("#candidate-table tbody tr").count() == len(cell["candidates"])
        if record:
            assert page.locator(f"#trace >> {record}").count() >= 1, key
        page.keyboard.press("Escape")
        assert page.is_hidden("#panel")


def test_keyboard_moves_between_answers_and_opens_them(runs, open_page):
    pages, _ = runs
    page = open_page(pages["a"])
    page.focus('td.cell[data-row="0"][data-col="0"]')
    for key in ("ArrowRight", "ArrowRight", "ArrowDown", "ArrowLeft"):
        page.keyboard.press(key)
    focused = page.evaluate("[document.activeElement.dataset.row, document.activeElement.dataset.col]")
    assert focused == ["1", "1"]
    assert (
        page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    )  # focus is visible
    page.keyboard.press("Enter")
    assert page.is_visible("#panel") and page.evaluate("document.activeElement.id") == "panel-close"
    page.keyboard.press("Escape")
    assert page.is_hidden("#panel")
    assert page.evaluate("[document.activeElement.dataset.row, document.activeElement.dataset.col]") == [
        "1",
        "1",
    ]
    assert (
        page.locator("#curve-svg g.point").first.get_attribute("tabindex") == "0"
    )  # chart points take focus
    page.focus("#curve-svg g.point")
    assert page.is_visible("#tooltip") and "generated tokens" in page.text_content("#tooltip")


def test_two_runs_show_per_prompt_deltas_for_shared_settings(runs, open_page):
    pages, data = runs
    page = open_page(pages["ab"])
    a, b = cells_of(data["a"]), cells_of(data["b"])
    shared = ["plain", "best-of-n:n=2", "best-of-n:n=4"]
    for key in shared:
        deltas = np.array([b[key, p.id]["reward"] - a[key, p.id]["reward"] for p in PROMPTS])
        row = page.locator(f'#runs-table tr[data-key="{key}"][data-metric="reward"]')
        assert float(row.locator('td[data-field="mean"]').get_attribute("data-value")) == pytest.approx(
            deltas.mean()
        )
        assert float(row.locator('td[data-field="wins"]').get_attribute("data-value")) == np.sum(deltas > 0)
    page.select_option("#view", value="delta")
    assert (
        page.eval_on_selector_all("#grid thead th[data-key]", "ths => ths.map(t => t.dataset.key)") == shared
    )
    for r, prompt in enumerate(PROMPTS):
        for c, key in enumerate(shared):
            shown = page.get_attribute(f'td[data-row="{r}"][data-col="{c}"]', "data-delta")
            assert float(shown) == pytest.approx(
                b[key, prompt.id]["reward"] - a[key, prompt.id]["reward"], abs=1e-12
            )
    page.click('td[data-row="0"][data-col="2"]')
    both = page.locator("#panel .run-answer")
    assert both.count() == 2
    assert b["best-of-n:n=4", "p0"]["text"] in both.nth(1).text_content()


def test_text_from_the_data_is_never_markup(runs, open_page):
    pages, data = runs
    page = open_page(pages["tasks"])
    hostile = data["tasks"]["cells"][7]
    keys = data["tasks"]["config"]["strategies"]
    row = [p.id for p in PROMPTS].index(hostile["prompt"])
    td = page.locator(f'td.cell[data-row="{row}"][data-col="{keys.index(hostile["key"])}"]')
    assert "<img src=x" in td.inner_text()
    td.click()
    assert page.text_content("#chosen-answer") == HOSTILE
    assert page.locator("main img, #panel img, #panel b, #grid b").count() == 0
    assert page.evaluate("window.__xss === undefined")


def test_light_and_dark(runs, open_page):
    pages, _ = runs
    style = "getComputedStyle(document.body).backgroundColor"
    backgrounds = {scheme: open_page(pages["a"], scheme).evaluate(style) for scheme in ("light", "dark")}
    assert backgrounds == {"light": "rgb(255, 255, 255)", "dark": "rgb(15, 20, 25)"}


def test_a_2000_by_12_report_becomes_interactive_within_the_bound(tmp_path, open_page):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(synthetic_eval_results(2000, 12)))
    page_path = write_report([path], tmp_path / "big.html")
    start = time.perf_counter()
    page = open_page(page_path)
    ready = time.perf_counter() - start
    choose_filter(page, "abeatsb")
    page.select_option("#sort", value="col:11")
    page.click("#pager-top button:has-text('Next')")
    responsive = time.perf_counter() - start
    assert len(rows(page)) == 50 and "page 2 of" in page.text_content("#pager-top")
    print(f"2000 x 12 report ({page_path.stat().st_size / 1e6:.0f} MB): interactive after {ready:.2f} s, "
          f"filtered, sorted and paged after {responsive:.2f} s")  # fmt: skip
    assert responsive < BOUND_S
