"""Guided decoding speed: plain sampling vs ARGS (ours and the naive reference) vs IVG modes.

Everything runs in one process on the embedded default policy (SmolLM2-135M-Instruct, fp32),
already loaded, on one chat prompt, up to ``--max-new-tokens`` (64) new tokens per answer:

- ``plain``: ``Decoder.generate`` one answer, temperature 0.7 (the baseline tokens/second);
- ``args_ours``: ``RewardGuided(k=10)`` greedy with incremental branch scoring;
- ``args_naive``: the same strategy with ``NaiveClassifierScorer`` (a full reward forward over
  prompt + response + candidate for every candidate at every token, as the ARGS authors' code);
- ``args_implicit``: ``RewardGuided(k=10)`` with ``ImplicitReward(policy, principle=...)``;
- ``ivg_token``: ``ValueGuided(principle=..., chunk_value="none")``;
- ``ivg_chunk``: ``ValueGuided(principle=..., token_guidance=False)`` (W=2, K=2, L=30, implicit value);
- ``ivg_both``: ``ValueGuided(principle=...)`` (both signals).

The ARGS reward is SmolLM2-135M loaded as a ``LlamaForSequenceClassification``: the converted
policy's weights plus a linear head initialised with a fixed seed. The head is untrained: this
is a speed benchmark (it shares SmolLM2's vocabulary, so the incremental path is exercised).
Ours and the naive reference must pick the same tokens; the script checks and reports it.

After an untimed warm-up of every way, ``--repeats`` rounds run all ways in turn; the report
gives median seconds, tokens/second (answer tokens, EOS included, per second) and ratios.

    flock /tmp/align_bench.lock python benchmarks/bench_guided.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from common import (
    add_common_options,
    interleaved,
    machine,
    machine_line,
    markdown_table,
    ratio,
    spread,
    write_json,
)

PROMPT = [
    {
        "role": "user",
        "content": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    }
]
PRINCIPLE = "Answer concisely and politely."


def smollm_classifier(policy: Any, seed: int = 0) -> Any:
    """SmolLM2 as a one-label sequence classifier: the policy's weights, a seeded random head."""
    from transformers import LlamaForSequenceClassification

    from align_chains.rewards import ClassifierReward

    settings = {k: v for k, v in policy.model.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = policy.model.config.__class__.from_dict({**settings, "num_labels": 1})
    model = LlamaForSequenceClassification(config).to(policy.model.dtype)
    model.model.load_state_dict(policy.model.model.state_dict())
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.score.weight, std=0.02)
    return ClassifierReward(model.eval(), policy.tokenizer, name="smollm2-135m-classifier (untrained head)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--prompt", default=PROMPT[0]["content"], help="The user message.")
    add_common_options(
        parser,
        repeats=3,
        seed=0,
        json_help="Also write the raw runs here.",
        seed_help="round r uses seed + r",
    )
    return parser


def summarize(runs: list[dict[str, Any]], ways: list[str]) -> tuple[dict[str, dict[str, float]], bool]:
    """Medians per way over the timed rounds, and whether ARGS ours and naive chose the same tokens."""
    timed = [r for r in runs if r["repeat"] >= 0]
    same = all(
        a["ids"] == b["ids"]
        for a in timed
        if a["way"] == "args_ours"
        for b in timed
        if b["way"] == "args_naive" and b["repeat"] == a["repeat"]
    )
    summary: dict[str, dict[str, float]] = {}
    for name in ways:
        mine = [r for r in timed if r["way"] == name]
        summary[name] = {
            **spread(r["seconds"] for r in mine),
            "median_tokens": statistics.median(r["tokens"] for r in mine),
            "median_tok_per_s": statistics.median(r["tokens"] / r["seconds"] for r in mine),
        }
    return summary, same


def print_report(summary: dict[str, dict[str, float]], same: bool) -> None:
    plain_tps = summary["plain"]["median_tok_per_s"]
    rows = [
        [f"`{name}`", f"{s['median_s']:.2f}", f"{s['min_s']:.2f}", f"{s['max_s']:.2f}",
         f"{s['median_tokens']:.0f}", f"{s['median_tok_per_s']:.1f}",
         f"{ratio(s['median_tok_per_s'], plain_tps):.2f}"]
        for name, s in summary.items()
    ]  # fmt: skip
    header = ["way", "median s", "min s", "max s", "tokens", "tokens/s", "tokens/s vs plain"]
    print(markdown_table(header, rows, align="---:"))
    speedup = ratio(summary["args_naive"]["median_s"], summary["args_ours"]["median_s"])
    print()
    print(f"ARGS naive / ours (median seconds): {speedup:.2f}x; same tokens chosen: {same}")
    print(f"ARGS ours tokens/s vs plain: {summary['args_ours']['median_tok_per_s'] / plain_tps:.2f}")


def main() -> None:
    args = build_parser().parse_args()

    import transformers
    from reference.naive_args import NaiveClassifierScorer

    from align_chains import ImplicitReward, RewardGuided, SamplingParams, ValueGuided, load_policy
    from align_chains.engine import ComputeCounters, Decoder
    from align_chains.rewards import CallableReward

    transformers.logging.set_verbosity_error()
    policy = load_policy()
    classifier = smollm_classifier(policy)
    implicit = ImplicitReward(policy, principle=PRINCIPLE)
    unused = CallableReward(lambda p, r: 0.0, name="unused")  # IVG's chunk value is the implicit one here
    prompt = [{"role": "user", "content": args.prompt}]
    prompt_ids = policy.render(prompt)
    n = args.max_new_tokens

    def params(seed: int, temperature: float = 0.7, top_k: int = 0) -> SamplingParams:
        return SamplingParams(max_new_tokens=n, temperature=temperature, top_k=top_k, seed=seed)

    def plain(seed: int) -> tuple[int, list[int]]:
        (c,) = Decoder(policy).generate([prompt_ids], 1, params(seed))
        return c.generated_tokens, c.token_ids

    def args_run(
        scorer_factory: Callable[[], Any] | None, reward: Any
    ) -> Callable[[int], tuple[int, list[int]]]:
        def run(seed: int) -> tuple[int, list[int]]:
            scorer = scorer_factory() if scorer_factory else None
            (r,) = RewardGuided(k=args.k).run_batch([prompt], policy, reward, params(seed), scorer=scorer)
            return len(r.trace), r.best.token_ids

        return run

    def ivg(**settings: Any) -> Callable[[int], tuple[int, list[int]]]:
        def run(seed: int) -> tuple[int, list[int]]:
            r = ValueGuided(principle=PRINCIPLE, **settings).run(
                prompt, policy, unused, params(seed, top_k=50)
            )
            return r.best.num_tokens + (r.finish_reason == "stop"), r.best.token_ids

        return run

    ways: dict[str, Callable[[int], tuple[int, list[int]]]] = {
        "plain": plain,
        "args_ours": args_run(None, classifier),
        "args_naive": args_run(lambda: NaiveClassifierScorer(classifier, ComputeCounters()), classifier),
        "args_implicit": args_run(None, implicit),
        "ivg_token": ivg(chunk_value="none"),
        "ivg_chunk": ivg(token_guidance=False),
        "ivg_both": ivg(),
    }
    runs: list[dict[str, Any]] = []
    for repeat, name in interleaved(args.repeats, ways):  # repeat -1: warm-up
        start = time.perf_counter()
        tokens, ids = ways[name](args.seed + max(repeat, 0))
        seconds = time.perf_counter() - start
        runs.append({"way": name, "repeat": repeat, "seconds": seconds, "tokens": tokens, "ids": ids})
        print(f"{name:14s} repeat {repeat:2d}: {seconds:7.2f} s, {tokens} tokens", flush=True)

    summary, same = summarize(runs, list(ways))
    env = machine()
    print(f"\npolicy {policy.name}, {len(prompt_ids)} prompt tokens, up to {n} new tokens, k={args.k}, "
          f"{args.repeats} repeats\n{machine_line(env)}")  # fmt: skip
    print_report(summary, same)
    write_json(args.json, {"machine": env, "summary": summary, "runs": runs, "same_tokens": same}, indent=1)


if __name__ == "__main__":
    main()
