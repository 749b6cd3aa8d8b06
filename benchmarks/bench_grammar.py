"""Best-of-8 under a JSON-schema grammar vs Best-of-8 unconstrained: what the constraint costs.

Both ways run in one process on the embedded policy (SmolLM2-135M-Instruct, loaded once, never
timed) with the embedded MiniLM reward, the same prompt (the schema is asked for in the system
message either way, by the output contract), the same seed and settings (8 candidates, 64 new
tokens, temperature 0.7, no reruns). The only difference is ``constrain``: True decodes under
the schema's grammar (llguidance masks), False only ranks the candidates by the schema.

After one untimed warm-up of each way (it builds llguidance's tokenizer view once, ~2-5 s, and
compiles the grammar), ``--repeats`` rounds run the two ways interleaved. Reported per way:
median seconds per request, generated tokens, seconds per generated token, candidates whose
JSON validates; for the constrained way the median mask time per generated token (computing
the per-row bitmasks in llguidance, applying them, advancing the matchers).

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_grammar.py --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from typing import Any

from common import (
    add_common_options,
    interleaved,
    machine,
    machine_line,
    markdown_table,
    medians,
    ratio,
    write_json,
)

N, MAX_TOKENS, TEMPERATURE, SEED = 8, 64, 0.7, 0
PROMPT = "Describe the city of Lyon in France for a travel guide."
SCHEMA = {
    "title": "City",
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "country": {"type": "string"},
        "population": {"type": "integer"},
        "known_for": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "country", "population", "known_for"],
    "additionalProperties": False,
}
WAYS = ("unconstrained", "constrained")


def run_way(policy: Any, reward: Any, way: str, seed: int) -> dict[str, Any]:
    """One Best-of-N request, constrained or not: its time, tokens, mask time and valid candidates."""
    from align_chains import BestOfNChatModel
    from align_chains.chat_models.output_contract import OutputContract, schema_errors

    response_format = {"type": "json_schema", "json_schema": {"name": "City", "schema": SCHEMA}}
    model = BestOfNChatModel(
        model=policy,
        reward=reward,
        n=N,
        max_tokens=MAX_TOKENS,
        temperature=TEMPERATURE,
        seed=seed,
        output_retries=0,
        constrain=way == "constrained",
    )
    contract = OutputContract.from_kwargs({"response_format": response_format})
    start = time.perf_counter()
    (result,) = model.run_strategy([[{"role": "user", "content": PROMPT}]], contract=contract)
    seconds = time.perf_counter() - start
    valid = 0
    for c in result.candidates:
        with contextlib.suppress(json.JSONDecodeError):
            valid += schema_errors(json.loads(c.text), SCHEMA) is None
    tokens = result.counters.generated_tokens
    return {
        "seconds": seconds,
        "tokens": tokens,
        "seconds_per_token": seconds / max(tokens, 1),
        "mask_seconds": result.counters.grammar_mask_seconds,
        "mask_ms_per_token": 1e3 * result.counters.grammar_mask_seconds / max(tokens, 1),
        "valid": valid,
        "chosen": result.text,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_options(parser, repeats=5, seed=SEED)
    args = parser.parse_args()

    from align_chains.models.policy import load_policy
    from align_chains.rewards import load_reward

    policy = load_policy("smollm2-135m-instruct", device="cpu")
    reward = load_reward("minilm", device="cpu", policy=policy)
    runs: dict[str, list[dict]] = {w: [] for w in WAYS}
    for repeat, way in interleaved(args.repeats, WAYS):  # repeat -1: the untimed warm-up
        row = run_way(policy, reward, way, args.seed)
        if repeat >= 0:
            runs[way].append(row)

    env = machine()
    print(f"# bench_grammar: Best-of-{N}, {MAX_TOKENS} new tokens, T={TEMPERATURE}, seed={args.seed}")
    print(machine_line(env))
    print(f"# repeats {args.repeats}; medians over repeats")
    med = {w: medians(runs[w], [k for k in runs[w][0] if k != "chosen"]) for w in WAYS}
    header = ["way", "s / request", "generated tokens", "ms / token", "mask ms / token", "valid candidates"]
    rows = [
        [way, f"{m['seconds']:.2f}", f"{m['tokens']:.0f}", f"{1e3 * m['seconds_per_token']:.1f}",
         f"{m['mask_ms_per_token']:.2f}", f"{m['valid']:.0f} / {N}"]
        for way, m in med.items()
    ]  # fmt: skip
    print(markdown_table(header, rows))
    per_request = ratio(med["constrained"]["seconds"], med["unconstrained"]["seconds"])
    per_token = ratio(med["constrained"]["seconds_per_token"], med["unconstrained"]["seconds_per_token"])
    print(f"\nconstrained / unconstrained wall time per request: {per_request:.2f}x (goal <= 1.20x)")
    print(f"constrained / unconstrained wall time per generated token: {per_token:.2f}x")
    print("chosen (constrained, last run):", runs["constrained"][-1]["chosen"])
    print("chosen (unconstrained, last run):", runs["unconstrained"][-1]["chosen"])
    config = {
        "n": N,
        "max_tokens": MAX_TOKENS,
        "temperature": TEMPERATURE,
        "seed": args.seed,
        "repeats": args.repeats,
    }
    write_json(args.json, {"config": config, "machine": env, "medians": med, "runs": runs})


if __name__ == "__main__":
    main()
