"""Concurrent ``ainvoke`` calls in one process against one ``batch()`` of the same prompts.

Three ways, interleaved in each round, on the embedded SmolLM2 + MiniLM, Best-of-4:
``gather``: k concurrent ``ainvoke`` calls (batched by the policy's scheduler), ``alone``: the same
with ``concurrent_batching=False`` (each call on its own, one after another: the old behaviour),
``batch``: one ``abatch`` of the k prompts. Reports median wall seconds and the ratios.

    python benchmarks/bench_concurrent_calls.py --clients 4,8,16 --repeats 2 \
        --json docs/bench_concurrent_calls.json
"""

from __future__ import annotations

import argparse
import asyncio
import os

from common import (
    add_common_options,
    interleaved,
    machine,
    machine_line,
    markdown_table,
    ratio,
    spread,
    timed,
    write_json,
)

from align_chains import BestOfNChatModel, load_policy, load_reward

TOPICS = ["sleep", "tea", "running", "focus", "cooking", "saving money", "reading", "stretching"]


def prompts(k: int) -> list[str]:
    return [f"Give me one tip about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(k)]


async def gather(model: BestOfNChatModel, texts: list[str]) -> list:
    return await asyncio.gather(*(model.ainvoke(t) for t in texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="4,8,16", help="comma-separated numbers of concurrent calls")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    add_common_options(parser, repeats=2, seed=None)
    args = parser.parse_args()
    policy, reward = load_policy(), load_reward("minilm")
    settings = {"policy": policy, "reward": reward, "n": args.n, "max_tokens": args.max_tokens}
    models = {
        "gather": BestOfNChatModel(**settings),
        "alone": BestOfNChatModel(**settings, concurrent_batching=False),
    }
    ways = {
        "gather": lambda texts: asyncio.run(gather(models["gather"], texts)),
        "alone": lambda texts: asyncio.run(gather(models["alone"], texts)),
        "batch": lambda texts: asyncio.run(models["gather"].abatch(texts)),
    }
    results: dict[int, dict[str, dict[str, float]]] = {}
    for k in [int(c) for c in args.clients.split(",")]:
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        for repeat, way in interleaved(args.repeats, ways):
            _, took = timed(lambda: ways[way](prompts(k)))  # noqa: B023
            if repeat >= 0:
                seconds[way].append(took)
            print(f"  k={k} {way}: {took:.2f} s", flush=True)
        results[k] = {way: spread(values) for way, values in seconds.items()}
    report = {"machine": machine(load=os.getloadavg()), "settings": vars(args) | {"json": str(args.json)},
              "seconds": results}  # fmt: skip
    print(machine_line(report["machine"]))
    rows = []
    for k, by_way in results.items():
        med = {way: v["median_s"] for way, v in by_way.items()}
        speedup, cost = ratio(med["alone"], med["gather"]), ratio(med["gather"], med["batch"])
        rows.append(
            [k, *(f"{med[w]:.2f}" for w in ("alone", "gather", "batch")), f"{speedup:.2f}x", f"{cost:.2f}x"]
        )
    header = ["calls", "alone (s)", "gather (s)", "batch() (s)", "alone / gather", "gather / batch()"]
    print(markdown_table(header, rows))
    write_json(args.json, report)


if __name__ == "__main__":
    main()
