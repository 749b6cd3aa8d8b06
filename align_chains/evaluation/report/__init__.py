"""The evaluation report: an ``align-chains eval`` results file (or two) as one HTML page.

>>> from align_chains.evaluation.report import write_report
>>> write_report(["eval.json"], "report.html")  # doctest: +SKIP

From the shell: ``align-chains eval ... --html report.html`` or ``align-chains view eval.json``.
Modules: ``load`` (reading and checking a results file), ``pairs`` (paired statistics),
``data`` (the document the page embeds), ``html`` (the page); the page's CSS and JavaScript are
``assets/``. See docs/evaluation.md.
"""

from align_chains.evaluation.report.html import render_page, write_report
from align_chains.evaluation.report.load import EvalFileError, load_eval_file
from align_chains.evaluation.report.pairs import compare

__all__ = ["EvalFileError", "compare", "load_eval_file", "render_page", "write_report"]
