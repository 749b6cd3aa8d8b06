"""Run one DARWIN request on the embedded defaults and save its trace (JSON) and plot (PNG).

    python benchmarks/darwin_trace.py --out docs/darwin_trace.png --cycles 2

The printout lists each cycle's parent instruction, its mutations (and whether they were
parsed from the policy's list), the replacements and the archive at the end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from align_chains import Darwin, SamplingParams, load_policy, load_reward
from align_chains.plots import plot_darwin_trace


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default="Give me three tips for better sleep.")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("darwin_trace.png"))
    args = parser.parse_args(argv)

    policy, reward = load_policy(), load_reward()
    strategy = Darwin(n=args.n, m=args.m, k=args.k, cycles=args.cycles)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7, top_k=40, seed=args.seed)
    result = strategy.run(args.prompt, policy, reward, params)
    for record in result.trace:
        if record["event"] in ("seed", "mutation", "replace", "winner", "cycle_end"):
            print({k: v for k, v in record.items() if k != "prompt"})
    print("archive:", json.dumps(result.details["archive"], indent=1))
    print(f"best (reward {result.reward:.4f}, cycle {result.best.meta['cycle']}):\n{result.text}")
    print("compute:", result.counters.as_dict())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result.trace, indent=1))
    plot_darwin_trace(result.trace, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
