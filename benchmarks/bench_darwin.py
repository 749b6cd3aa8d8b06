"""DARWIN wall-clock benchmark: cached candidates (``Darwin``) vs. re-prefilling (``DarwinReprefill``).

Both ways run the same search in one process on the embedded default policy
(SmolLM2-135M-Instruct) and the embedded MiniLM reward, on the same loaded objects, so model
loading is never timed. With the same seed both make the same random draws and return the
same answers (the script checks this): they differ only in how the candidates of a cycle are
decoded.

- ``cached``: ``Darwin(...)``: each candidate's mutated prompt is prefilled once; a replacement
  keeps the row's own prompt cache and prefills only the copied partial answer onto it;
- ``reprefill``: ``DarwinReprefill(...)``: every ``m`` tokens each candidate's prompt plus its
  partial answer is re-encoded from scratch in one left-padded batch (the authors' scheme).

Both follow the authors' replacement: a replaced candidate takes a top-k candidate's partial
answer and keeps its own mutated instruction.

Two prompts: ``short`` (a one-line question) and ``context`` (a system message carrying a
~450-token incident report, then a question; only the question is mutated, the report is part
of every candidate's prompt). After one untimed warm-up of each way, ``--repeats`` rounds run
the ways interleaved; the report gives median seconds per request, the median ratio, and the
seconds spent in the candidate phase alone (decoding, copying and re-encoding candidates:
the part the two ways do differently).

Run from the repository root::

    python benchmarks/bench_darwin.py --repeats 3
    python benchmarks/bench_darwin.py --repeats 3 --json bench_darwin.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from common import (
    add_common_options,
    interleaved,
    machine,
    machine_line,
    medians,
    ratio,
    ratio_line,
    spread,
    write_json,
)
from reference.darwin_reprefill import DarwinReprefill

from align_chains.engine.decoder import Decoder
from align_chains.engine.sampling import SamplingParams
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.darwin_population import Population

WAYS = ("cached", "reprefill")
QUESTION = "Give me three tips for better sleep."
REPORT = (
    "Incident report INC-2291: checkout latency regression, prepared by the payments platform team. "
    "On Tuesday at 09:42 UTC the p99 latency of the checkout API rose from 380 ms to 4.1 s. The "
    "regression lasted 3 hours and 12 minutes and affected roughly 18 percent of checkout attempts. "
    "About 2,300 orders failed outright with a gateway timeout, and customers saw a generic error "
    "page. The on-call engineer was paged by the latency alert at 09:47 and opened an incident channel "
    "at 09:51. Initial suspicion fell on the card processor, because its status page reported degraded "
    "performance. That lead was dropped at 10:20, when traces showed the time was spent inside our own "
    "order service. The order service had been deployed at 09:35 with release 4.18, which added a "
    "fraud-scoring step. The new step called the risk service synchronously for every cart item "
    "instead of once per order. Large carts therefore made dozens of sequential network calls, each "
    "taking between 40 and 90 ms. The risk service itself stayed healthy, but its connection pool of "
    "50 connections was saturated. Requests queued behind the pool, and the queueing delay spread to "
    "small carts as well. A rollback of release 4.18 was proposed at 10:35 but delayed, because the "
    "release also carried a database migration that had already run. The team confirmed at 11:40 "
    "that the migration was backward compatible and rolled back at 11:52. Latency returned to normal "
    "by 12:54, after the connection pool drained and caches warmed again. No payment data was lost and "
    "no customer was charged twice. Contributing factors were the missing load test for large carts "
    "and the absence of a per-item latency budget in the design review. The canary stage covered only "
    "2 percent of traffic for ten minutes, too short to catch the problem."
)
PROMPTS: dict[str, list[dict[str, str]]] = {
    "short": [{"role": "user", "content": QUESTION}],
    "context": [
        {"role": "system", "content": f"Answer questions about this report.\n\n{REPORT}"},
        {
            "role": "user",
            "content": "What was the root cause of the regression, and why was the rollback slow?",
        },
    ],
}


class TimedPopulation:
    """Wraps a candidate population and adds the seconds spent in it to ``clock[0]``."""

    def __init__(self, inner: Population, clock: list[float]) -> None:
        self.inner, self.clock = inner, clock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in ("extend", "transplant", "completions"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.clock[0] += time.perf_counter() - start

        return timed


def timed_strategy(cls: type[Darwin], clock: list[float], **settings: Any) -> Darwin:
    """An instance of ``cls`` whose candidate populations report their time to ``clock``."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        def population(self, decoder: Decoder, prompts, params, owners, num_owners) -> Population:
            start = time.perf_counter()
            inner = super().population(decoder, prompts, params, owners, num_owners)
            clock[0] += time.perf_counter() - start  # the candidates' first prefill
            return TimedPopulation(inner, clock)  # type: ignore[return-value]

    return Timed(**settings)


@dataclass
class Run:
    prompt: str
    way: str
    repeat: int  # -1: warm-up
    seconds: float
    candidate_seconds: float
    reward: float
    text: str
    counters: dict[str, float | int]
    answers: list[str]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=list(PROMPTS))
    add_common_options(parser, repeats=3, seed_help="round r uses seed + r, both ways alike")
    return parser


def run_prompt(prompt_name: str, policy: Any, reward: Any, settings: dict[str, int], args: Any) -> list[Run]:
    """The warm-up and the timed rounds of both ways on one prompt, interleaved."""
    classes = {"cached": Darwin, "reprefill": DarwinReprefill}
    messages = PROMPTS[prompt_name]
    print(f"\nprompt {prompt_name!r}: {len(policy.render(messages))} tokens after the chat template")
    runs: list[Run] = []
    for repeat, way in interleaved(args.repeats, WAYS):
        seed = args.seed + max(repeat, 0)
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7, top_k=40, seed=seed)
        clock = [0.0]
        strategy = timed_strategy(classes[way], clock, **settings)
        start = time.perf_counter()
        result = strategy.run(messages, policy, reward, params)
        seconds = time.perf_counter() - start
        runs.append(
            Run(prompt_name, way, repeat, seconds, clock[0], float(result.reward or 0.0), result.text,
                result.counters.as_dict(), [c.text for c in result.candidates])
        )  # fmt: skip
        label = "warm-up" if repeat < 0 else f"round {repeat}"
        print(
            f"  {label:<8} {way:<10} {seconds:7.2f} s (candidates {clock[0]:6.2f} s), "
            f"prefilled {result.counters.prompt_tokens}, forwards {result.counters.forward_passes}"
        )
        if way == WAYS[-1]:
            print(f"  same answers from both ways: {runs[-1].answers == runs[-2].answers}")
    return runs


def summarize(runs: list[Run], prompts: list[str]) -> dict[str, Any]:
    """Medians over the timed rounds, per prompt and way (printed as a table too)."""
    print("\nmedians over the timed rounds")
    header = (
        f"{'prompt':<8} {'way':<10} {'request s':>10} {'candidates s':>13} {'prefilled':>10} {'forwards':>9}"
    )
    print(header + "\n" + "-" * len(header))
    summary: dict[str, Any] = {}
    for prompt_name in prompts:
        for way in WAYS:
            rows = [r for r in runs if r.prompt == prompt_name and r.way == way and r.repeat >= 0]
            summary[f"{prompt_name}/{way}"] = s = {
                **spread(r.seconds for r in rows),
                "median_candidate_s": statistics.median(r.candidate_seconds for r in rows),
                **medians(
                    [r.counters for r in rows], ("prompt_tokens", "forward_passes", "generated_tokens")
                ),
            }
            print(
                f"{prompt_name:<8} {way:<10} {s['median_s']:>10.2f} {s['median_candidate_s']:>13.2f} "
                f"{s['prompt_tokens']:>10.0f} {s['forward_passes']:>9.0f}"
            )
    print()
    return summary


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    import transformers

    from align_chains import load_policy, load_reward

    transformers.logging.set_verbosity_error()
    policy, reward = load_policy(), load_reward()
    settings = {"n": args.n, "m": args.m, "k": args.k, "cycles": args.cycles}
    env = machine(
        transformers=transformers.__version__, device=str(policy.device), dtype=str(policy.model.dtype)
    )
    print(
        f"policy {policy.name} ({env['device']}, {env['dtype']}), reward {reward.name}\n{machine_line(env)}"
    )
    print(f"settings {settings}, max_new_tokens={args.max_new_tokens}, temperature 0.7, top-k 40")
    runs = [
        run for prompt_name in args.prompts for run in run_prompt(prompt_name, policy, reward, settings, args)
    ]
    summary = summarize(runs, args.prompts)
    ratios = {}
    for prompt_name in args.prompts:
        c, r = summary[f"{prompt_name}/cached"], summary[f"{prompt_name}/reprefill"]
        ratios[prompt_name] = {
            "request": ratio(r["median_s"], c["median_s"]),
            "candidates": ratio(r["median_candidate_s"], c["median_candidate_s"]),
        }
        print(
            f"{prompt_name}: {ratio_line('reprefill', 'cached', ratios[prompt_name]['request'])} per "
            f"request, {ratios[prompt_name]['candidates']:.2f}x in the candidate phase"
        )
    agree = all(
        a.answers == b.answers
        for a, b in zip(runs[::2], runs[1::2], strict=True)
        if a.prompt == b.prompt and a.repeat == b.repeat
    )
    print(f"both ways returned identical candidates in every round: {agree}")
    config = {**settings, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "seed": args.seed}
    payload = {"config": config, "machine": env, "summary": summary, "ratios": ratios}
    write_json(args.json, payload | {"runs": [asdict(r) for r in runs]})


if __name__ == "__main__":
    main()
