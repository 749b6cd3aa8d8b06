"""Reward per compute: run strategies on a prompt file and compare what each buys.

>>> from align_chains.evaluation import evaluate
>>> report = evaluate(["best-of-n:n=1,4,16", "early-rejection"], json_path="eval.json", plot_path="eval.png")
>>> print(report.table())  # doctest: +SKIP

The same from the shell: ``align-chains eval --strategies best-of-n:n=1,4,16 early-rejection``.
See docs/evaluation.md for how to read the curves.
"""

from align_chains.evaluation.plot import bon_kl_bound, bon_win_ceiling, plot_curves
from align_chains.evaluation.prompts import STARTER_PROMPTS, EvalPrompt, load_prompts
from align_chains.evaluation.rewards import load_eval_reward
from align_chains.evaluation.runner import EvalReport, evaluate, per_prompt_compute
from align_chains.evaluation.specs import StrategySetting, parse_spec, parse_specs
from align_chains.evaluation.stats import bootstrap_ci

__all__ = [
    "STARTER_PROMPTS",
    "EvalPrompt",
    "EvalReport",
    "StrategySetting",
    "bon_kl_bound",
    "bon_win_ceiling",
    "bootstrap_ci",
    "evaluate",
    "load_eval_reward",
    "load_prompts",
    "parse_spec",
    "parse_specs",
    "per_prompt_compute",
    "plot_curves",
]
