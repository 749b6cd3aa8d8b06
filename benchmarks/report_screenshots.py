"""Screenshots of the eval report for the docs, taken in headless Chromium (Debian's, via Playwright).

The published report and its screenshots come from a real run on the embedded models; the
commands that make the report pages are in docs/evaluation.md ("Our report"). Then:

    python benchmarks/report_screenshots.py --report docs/reports/starter_eval.html \
        --compare docs/reports/seed_compare.html --out docs

writes report_summary.png (light), report_answers_dark.png (dark), report_details.png (the
details panel of ``--details-key`` on the first prompt) and report_compare.png (B − A per prompt).
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARGS += ["--disable-component-update", "--disable-sync", "--no-first-run"]


def open_page(browser, path: Path, scheme: str, height: int = 900):
    page = browser.new_page(
        viewport={"width": 1280, "height": height}, color_scheme=scheme, device_scale_factor=1
    )
    page.goto(path.resolve().as_uri())
    page.wait_for_function("document.documentElement.dataset.ready === '1'")
    return page


def between(page, first: str, last: str, out: Path) -> None:
    """A full-width screenshot from the top of ``first`` to the bottom of ``last``."""
    top = page.locator(first).bounding_box()
    bottom = page.locator(last).bounding_box()
    clip = {"x": 0, "y": top["y"], "width": 1280, "height": bottom["y"] + bottom["height"] - top["y"] + 8}
    page.screenshot(path=str(out), clip=clip, full_page=True)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True, help="a report page (align-chains eval --html)")
    parser.add_argument("--compare", type=Path, help="a two-run report page (align-chains view A B)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs (default docs)")
    parser.add_argument(
        "--details-key", default="darwin:n=2,k=1,cycles=1,m=16", help="the setting whose details to show"
    )
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = open_page(browser, args.report, "light")
        between(page, "header.top", "#pair", args.out / "report_summary.png")
        dark = open_page(browser, args.report, "dark")
        dark.select_option("#pair-b", label="plain")
        between(dark, "#matrix-h", "#pager-bottom", args.out / "report_answers_dark.png")
        details = open_page(browser, args.report, "light", height=1500)
        details.locator(f'#grid td.cell[data-row="0"][data-key="{args.details_key}"]').click()
        details.screenshot(path=str(args.out / "report_details.png"))
        print(f"wrote {args.out / 'report_details.png'}")
        if args.compare:
            compare = open_page(browser, args.compare, "light")
            compare.select_option("#view", value="delta")
            between(compare, "#runs", "#pager-bottom", args.out / "report_compare.png")
        browser.close()


if __name__ == "__main__":
    main()
