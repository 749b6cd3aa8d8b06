"""Waste in the decode loop: finished-row compaction, the stop-criteria cache, the step profile.

On the embedded default policy (SmolLM2-135M-Instruct), in one process, side by side:

- ``compaction``: Best-of-8 sampling (``Decoder.generate``, 8 rows per prompt, sampled lengths
  up to ``--max-new-tokens``) with compaction off and on at each ``--thresholds`` share of
  ended rows, interleaved round by round with the same seed; checks every way returns the same
  tokens and log-probabilities as "off", and counts the rows each decode forward pass ran;
- ``stop``: a request's setup (``Decoder.start`` with stop strings) with the criteria cache
  cleared before every request (as before the cache) and kept (now);
- ``profile``: one Best-of-8 decode step over the ~507-token incident-report prompt, split into
  the model's forward pass and everything else (sampling, bookkeeping, stop strings), with
  compaction off and on;
- ``compile`` (not run by default: compiling takes minutes): the same 8-row step through a
  transformers ``StaticCache``, eager and under ``torch.compile``, against the engine's step.

Medians of ``--repeats`` rounds after one warm-up; results as JSON (``--json``) and text::

    python benchmarks/bench_decode_waste.py --repeats 5 --json docs/bench_decode_waste.json
    python benchmarks/bench_decode_waste.py --parts profile --repeats 3
    python benchmarks/bench_decode_waste.py --parts compile
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import time
from typing import Any

import torch
from bench_best_of_n import build_messages
from common import add_common_options, interleaved, machine, machine_line, ratio, spread, write_json

from align_chains import Decoder, SamplingParams, load_policy
from align_chains.engine import compaction, make_generator
from align_chains.engine import decoder as decoder_module
from align_chains.models.policy import Policy

# short answers of varied length: rows of one prompt end at different steps
PROMPTS = [
    "Name a fruit and say in one sentence why you like it.",
    "What is the capital of France? Answer briefly.",
    "Give me one fun fact about cats.",
    "Write a short poem about the sea.",
]
STOP = ("\n\nUser:", "###", "</answer>")
DEFAULTS = dataclasses.asdict(compaction.COMPACTION)


def configure(**fields: Any) -> None:
    """Set fields of the process-wide compaction setting the decoder reads."""
    for name, value in fields.items():
        setattr(compaction.COMPACTION, name, value)


class RowMeter:
    """A forward hook counting the rows of each one-token (decode) forward pass."""

    def __init__(self) -> None:
        self.rows = 0

    def hook(self, _module: Any, _args: Any, kwargs: dict[str, Any], _out: Any) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[-1] == 1:
            self.rows += int(ids.shape[0])


def compaction_part(policy: Policy, args: argparse.Namespace) -> dict[str, Any]:
    """Best-of-8 per prompt with compaction off and at each threshold, interleaved."""
    prompts = [policy.render([{"role": "user", "content": text}]) for text in PROMPTS[: args.prompts]]
    ways = ["off", *(f"on@{t:g}" for t in args.thresholds)]
    meter = RowMeter()
    handle = policy.model.register_forward_hook(meter.hook, with_kwargs=True)
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    rows: dict[str, int] = {}
    lengths: list[int] = []
    reference: dict[int, Any] = {}
    identical = True
    try:
        for repeat, way in interleaved(args.repeats, ways):
            configure(enabled=way != "off", min_finished=float(way.split("@")[1]) if "@" in way else 0.25)
            params = SamplingParams(
                max_new_tokens=args.max_new_tokens, temperature=0.7, seed=args.seed + max(repeat, 0)
            )
            meter.rows, start = 0, time.perf_counter()
            done = Decoder(policy).generate(prompts, 8, params)
            elapsed = time.perf_counter() - start
            result = [(c.token_ids, c.logprobs) for c in done]
            identical &= reference.setdefault(repeat, result) == result
            if repeat >= 0:
                seconds[way].append(elapsed)
                rows[way] = rows.get(way, 0) + meter.rows
                if way == "off":
                    lengths += [c.generated_tokens for c in done]
    finally:
        handle.remove()
        configure(**DEFAULTS)
    off = statistics.median(seconds["off"])
    return {
        "ways": {
            way: spread(values)
            | {"decode_rows": rows[way], "speedup_vs_off": ratio(off, statistics.median(values))}
            for way, values in seconds.items()
        },
        "identical_to_off": identical,
        "tokens_per_row": spread(lengths, "tokens"),
        "rows": 8 * len(prompts),
        "prompts": PROMPTS[: args.prompts],
        "max_new_tokens": args.max_new_tokens,
    }


def stop_part(policy: Policy, args: argparse.Namespace) -> dict[str, Any]:
    """A request's setup with stop strings: criteria rebuilt every request (before) or cached."""
    prompt = policy.render([{"role": "user", "content": PROMPTS[0]}])
    params = SamplingParams(max_new_tokens=8, stop=STOP)
    seconds: dict[str, list[float]] = {"rebuilt": [], "cached": []}
    for repeat, way in interleaved(args.repeats, seconds):
        if way == "rebuilt":
            decoder_module.stop_criteria.cache_clear()
        start = time.perf_counter()
        Decoder(policy).start([prompt], 8, params)
        if repeat >= 0:
            seconds[way].append(time.perf_counter() - start)
    rebuilt, cached = (statistics.median(seconds[w]) for w in ("rebuilt", "cached"))
    return {"ways": {w: spread(v) for w, v in seconds.items()}, "saved_s": rebuilt - cached, "stop": STOP}


def step_seconds(policy: Policy, prompt: list[int], seed: int) -> list[float]:
    """The seconds between successive decode steps of one Best-of-8 run of 40 tokens."""
    marks: list[float] = []
    decoder = Decoder(policy)
    params = SamplingParams(max_new_tokens=40, temperature=0.7, seed=seed)
    batch = decoder.start([prompt], 8, params)
    generator = make_generator(seed, policy.device)
    decoder.extend(batch, generator=generator, on_step=lambda _b: marks.append(time.perf_counter()))
    return [b - a for a, b in itertools.pairwise(marks)]


def profile_part(policy: Policy, args: argparse.Namespace) -> dict[str, Any]:
    """Median decode step vs median forward pass, Best-of-8 on the ~507-token prompt."""
    messages, length = build_messages(policy, 507)
    prompt = policy.render(messages)
    clock = {"start": 0.0}
    forwards: list[float] = []

    def pre(_m: Any, _a: Any, kwargs: dict[str, Any]) -> None:
        clock["start"] = time.perf_counter()

    def post(_m: Any, _a: Any, kwargs: dict[str, Any], _o: Any) -> None:
        if kwargs["input_ids"].shape[-1] == 1:
            forwards.append(time.perf_counter() - clock["start"])

    hooks = [
        policy.model.register_forward_pre_hook(pre, with_kwargs=True),
        policy.model.register_forward_hook(post, with_kwargs=True),
    ]
    out: dict[str, Any] = {"prompt_tokens": length}
    try:
        for way in ("off", "on"):
            configure(enabled=way == "on")
            steps: list[float] = []
            forwards.clear()
            for repeat in range(args.repeats):
                steps += step_seconds(policy, prompt, args.seed + repeat)
            step, forward = statistics.median(steps), statistics.median(forwards)
            out[way] = {
                "step_ms": 1e3 * step,
                "forward_ms": 1e3 * forward,
                "outside_share": 1 - forward / step,
            }
    finally:
        for hook in hooks:
            hook.remove()
        configure(**DEFAULTS)
    return out


def compile_part(policy: Policy, args: argparse.Namespace) -> dict[str, Any]:
    """A decode step of 8 rows: the engine (eager, preallocated cache) vs a transformers
    ``StaticCache`` forward, eager and under ``torch.compile`` (the first call compiles)."""
    from transformers import StaticCache

    messages, _ = build_messages(policy, 507)
    prompt = policy.render(messages)
    ids = torch.tensor([prompt] * 8)
    width, model = ids.shape[1], policy.model

    def static(compiled: bool, steps: int = 6) -> dict[str, float]:
        cache = StaticCache(config=model.config, max_cache_len=width + 64)
        with torch.inference_mode():
            out = model(input_ids=ids, cache=cache, use_cache=True, cache_position=torch.arange(width))
        forward = torch.compile(model.forward, dynamic=False) if compiled else model.forward
        token, times = out.logits[:, -1].argmax(-1)[:, None], []
        for step in range(steps):
            position = torch.tensor([width + step])
            start = time.perf_counter()
            with torch.inference_mode():
                out = forward(input_ids=token, cache=cache, use_cache=True, cache_position=position,
                              position_ids=position.expand(8, 1))  # fmt: skip
            times.append(time.perf_counter() - start)
            token = out.logits[:, -1].argmax(-1)[:, None]
        return {"first_call_s": times[0], "step_ms": 1e3 * statistics.median(times[2:])}

    engine = 1e3 * statistics.median(step_seconds(policy, prompt, args.seed))
    return {"engine_step_ms": engine, "static_eager": static(False), "static_compiled": static(True)}


def report(results: dict[str, Any]) -> None:
    """The text report: one block per part measured."""
    print(machine_line(results["machine"]))
    print(f"# load average (1, 5, 15 min) before {results['load_before']}, after {results['load_after']}")
    if "compaction" in results:
        part = results["compaction"]
        typical = part["tokens_per_row"]["median_tokens"]
        print(f"compaction: {part['rows']} rows, up to {part['max_new_tokens']} tokens, median {typical:.0f}")
        print(f"  identical tokens and log-probabilities to 'off': {part['identical_to_off']}")
        for way, row in part["ways"].items():
            timing = f"median {row['median_s']:.2f} s (min {row['min_s']:.2f}, max {row['max_s']:.2f})"
            print(f"  {way:>9}: {timing}, {row['decode_rows']} decode rows, {row['speedup_vs_off']:.2f}x")
    if "stop" in results:
        part = results["stop"]
        for way, row in part["ways"].items():
            print(f"stop criteria {way:>7}: request setup median {row['median_s'] * 1e3:.0f} ms")
        print(f"  saved per request: {part['saved_s'] * 1e3:.0f} ms")
    if "profile" in results:
        part = results["profile"]
        for way in ("off", "on"):
            row = part[way]
            split = f"step {row['step_ms']:.1f} ms, forward {row['forward_ms']:.1f} ms"
            share = 100 * row["outside_share"]
            print(f"profile (compaction {way}): {split}, outside the forward {share:.1f}%")
    if "compile" in results:
        part = results["compile"]
        print(f"engine step {part['engine_step_ms']:.0f} ms; static cache: " + ", ".join(
            f"{k} {v['step_ms']:.0f} ms (first call {v['first_call_s']:.1f} s)"
            for k, v in part.items() if k != "engine_step_ms"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_options(parser, repeats=5)
    parts = ["compaction", "stop", "profile", "compile"]
    parser.add_argument("--parts", nargs="+", default=parts[:3], choices=parts, help="what to measure")
    parser.add_argument(
        "--thresholds", nargs="+", type=float, default=[0.125, 0.25, 0.5],
        help="shares of ended rows at which to compact (default 0.125 0.25 0.5)",
    )  # fmt: skip
    parser.add_argument("--prompts", type=int, default=2, choices=range(1, len(PROMPTS) + 1),
                        help="prompts of 8 rows each in the compaction part")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per row at most")
    args = parser.parse_args()
    load_before = list(os.getloadavg())
    policy = load_policy()
    results: dict[str, Any] = {"machine": machine(policy_dtype=str(policy.model.dtype)), "args": vars(args)}
    run = {"compaction": compaction_part, "stop": stop_part, "profile": profile_part, "compile": compile_part}
    for name in args.parts:
        results[name] = run[name](policy, args)
    results["load_before"] = load_before
    results["load_after"] = list(os.getloadavg())
    report(results)
    write_json(args.json, results)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
