"""Served reward vs in-process reward: what scoring over HTTP adds to a Best-of-N request.

Starts ``align-chains serve-reward`` (the reward in its own process, as a team would run a reward
replica) and runs the same Best-of-N requests on the embedded SmolLM2 with the reward in-process
and through ``ServedReward``, interleaved, same seeds (so the same candidates are scored). Reports
median seconds per request, the overhead per request, and whether both chose the same answers.

    python benchmarks/bench_served_reward.py --n 8 --repeats 5 --json docs/bench_served_reward.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import add_common_options, interleaved, machine, machine_line, ratio, spread, timed, write_json

from align_chains import BestOfN, load_policy, load_reward
from align_chains.engine import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Give me three tips for better sleep.",
    "Write a haiku about the sea.",
    "Explain rainbows to a child.",
]


def start_reward_server(spec: str, port: int, threads: int) -> subprocess.Popen:
    """``serve-reward`` on 127.0.0.1:port, returned once /health answers."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "integrations/server"), env.get("PYTHONPATH", "")]
    )
    module = "align_chains_server.reward_server"
    command = [sys.executable, "-m", module, "--reward", spec, "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("serve-reward did not start within 300 s")


def score_calls(ways: dict, results: list, repeats: int) -> dict[str, dict[str, float]]:
    """The reward call alone: one prompt's candidates scored in-process and over HTTP, interleaved."""
    prompts = [PROMPTS[0]] * len(results[0].candidates)
    answers = [c.text for c in results[0].candidates]
    took: dict[str, list[float]] = {way: [] for way in ways}
    for repeat, way in interleaved(repeats, ways):
        _, seconds = timed(lambda: ways[way].score(prompts, answers))  # noqa: B023
        if repeat >= 0:
            took[way].append(seconds)
    return {way: spread(values) for way, values in took.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward", default="minilm", help="reward spec served and loaded in-process")
    parser.add_argument("--n", type=int, default=8, help="Best-of-N candidates")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8931)
    add_common_options(parser, repeats=5)
    args = parser.parse_args()
    server = start_reward_server(args.reward, args.port, threads=1)
    try:
        policy = load_policy()
        ways = {
            "in-process": load_reward(args.reward),
            "served": load_reward(f"http://127.0.0.1:{args.port}/score"),
        }
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        texts: dict[str, list[str]] = {way: [] for way in ways}
        for repeat, way in interleaved(args.repeats, ways):
            params = SamplingParams(max_new_tokens=args.max_tokens, temperature=1.0, seed=args.seed + repeat)
            reward = ways[way]
            results, took = timed(lambda: BestOfN(n=args.n).run_batch(PROMPTS, policy, reward, params))  # noqa: B023
            if repeat >= 0:
                seconds[way].append(took / len(PROMPTS))
                texts[way] += [r.text for r in results]
        scoring = score_calls(ways, results, args.repeats * 4)
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = {way: spread(values) for way, values in seconds.items()}
    local, served = summary["in-process"]["median_s"], summary["served"]["median_s"]
    report = {
        "machine": machine(load=os.getloadavg()),
        "settings": vars(args) | {"json": str(args.json), "prompts": PROMPTS},
        "seconds_per_request": summary,
        "overhead_s_per_request": served - local,
        "ratio_served_over_in_process": ratio(served, local),
        "same_answers": texts["served"] == texts["in-process"],
        "score_call_seconds": scoring,
    }
    print(machine_line(report["machine"]))
    print(f"Best-of-{args.n}, {args.max_tokens} tokens, reward {args.reward!r}, {args.repeats} rounds:")
    print(f"  in-process {local:.3f} s/request, served {served:.3f} s/request (median)")
    print(f"  overhead {served - local:+.3f} s/request ({ratio(served, local):.3f}x); same answers: "
          f"{report['same_answers']}")  # fmt: skip
    alone = {way: values["median_s"] for way, values in scoring.items()}
    print(f"  one score call of {args.n} answers alone: in-process {alone['in-process']:.4f} s, "
          f"served {alone['served']:.4f} s (median)")  # fmt: skip
    write_json(args.json, report)


if __name__ == "__main__":
    main()
