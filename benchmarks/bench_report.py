"""How fast the eval report is written and becomes usable in a browser, by report size.

For each size (prompts x settings, synthetic results with 4 candidates a cell: see
``align_chains.testing.synthetic_eval_results``): the seconds ``write_report`` takes, the
page's size, and in headless Chromium (Debian's ``chromium``, through Playwright) the time from
navigation to the page being interactive (its data parsed, summary, curves and the first page
of answers drawn) and to a filter, a sort and a page turn answered. Medians over --repeats.

    python benchmarks/bench_report.py --sizes 200x12 2000x12 --repeats 3 --json docs/bench_report.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import add_common_options, machine, machine_line, markdown_table, positive_int, spread, write_json

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARGS += ["--disable-component-update", "--disable-sync", "--no-first-run"]


def size(text: str) -> tuple[int, int]:
    """``PROMPTSxSETTINGS`` -> (prompts, settings)."""
    prompts, _, settings = text.partition("x")
    return positive_int(prompts), positive_int(settings)


def measure(page_path: Path, browser, rounds: int) -> dict[str, float]:
    """Browser timings of one page, medians over ``rounds`` fresh tabs."""
    ready, answered = [], []
    for _ in range(rounds):
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(page_path.as_uri())
        page.wait_for_function("document.documentElement.dataset.ready === '1'", timeout=120_000)
        ready.append(page.evaluate("window.reportReadyAt") / 1000)  # ms since navigation started
        start = time.perf_counter()
        page.check('#filters label[data-filter="abeatsb"] input')
        page.select_option("#sort", index=2)
        if page.is_enabled("#pager-top button:has-text('Next')"):  # more than one page of answers
            page.click("#pager-top button:has-text('Next')")
            page.wait_for_function("document.querySelector('#pager-top').textContent.includes('page 2')")
        answered.append(time.perf_counter() - start)
        page.close()
    return {**spread(ready, "ready_s"), **spread(answered, "filter_sort_page_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=size, default=[(200, 12), (2000, 12)], metavar="PxS")
    parser.add_argument(
        "--candidates", type=positive_int, default=4, help="candidates kept per cell (default 4)"
    )
    add_common_options(parser, repeats=3, seed=None)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from align_chains.evaluation.report import write_report
    from align_chains.testing import synthetic_eval_results

    info = machine(chromium=CHROMIUM)
    print(machine_line(info))
    rows, results = [], []
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for prompts, settings in args.sizes:
            data = Path(folder) / f"eval_{prompts}x{settings}.json"
            data.write_text(json.dumps(synthetic_eval_results(prompts, settings, candidates=args.candidates)))
            page_path = Path(folder) / f"report_{prompts}x{settings}.html"
            written = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                write_report([data], page_path)
                written.append(time.perf_counter() - start)
            timings = {**spread(written, "write_s"), **measure(page_path, browser, args.repeats)}
            result = {
                "prompts": prompts,
                "settings": settings,
                "page_mb": page_path.stat().st_size / 1e6,
                **timings,
            }
            results.append(result)
            medians = [timings[f"median_{k}_s"] for k in ("write", "ready", "filter_sort_page")]
            rows.append(
                [f"{prompts} x {settings}", f"{result['page_mb']:.1f}", *(f"{m:.2f}" for m in medians)]
            )
        browser.close()
    header = ["prompts x settings", "page MB", "write_report s", "interactive s", "filter + sort + page s"]
    print(markdown_table(header, rows))
    write_json(
        args.json,
        {"machine": info, "candidates": args.candidates, "repeats": args.repeats, "results": results},
    )


if __name__ == "__main__":
    main()
