"""Check ``align_chains.memory.estimate_memory`` against measured peak memory on CPU.

Each setting runs in a fresh Python process (so nothing earlier pollutes the measurement):

1. read the resident set size (RSS), build a SmolLM2-135M-shaped policy with random weights from
   the embedded policy's config (values do not change memory; random weights rarely emit EOS,
   so every row runs to ``max_new_tokens``, the case the estimate plans for), read RSS again:
   the difference is the measured weights;
2. reset the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``), run the strategy once,
   read the peak (``VmHWM``): peak minus the RSS before the run is the measured request;
3. compare ``estimate.total`` with weights + request, and ``estimate.request`` with the request.

glibc is told to return every allocation above 128 KiB to the kernel on free
(``MALLOC_MMAP_THRESHOLD_``), so freed tensors do not hide in the heap and RSS follows live
tensors; torch's CPU allocator caches nothing. Linux only (``/proc``).

    python benchmarks/memory_check.py --out docs/memory_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _s(strategy: dict, max_new_tokens: int, prompt_tokens: int, **extra: object) -> dict:
    return {"strategy": strategy, "max_new_tokens": max_new_tokens, "prompt_tokens": prompt_tokens, **extra}


IVG = {"chunk_tokens": 8, "principle": "Be concise."}
DARWIN = {"m": 8, "cycles": 1, "mutation_max_tokens": 32}
SEA = {"iterations": 3, "revise": False}
# strategy -> three settings: strategy fields, max_new_tokens, prompt tokens, and extras
SETTINGS: dict[str, list[dict]] = {
    "best-of-n": [
        _s({"n": 4}, 32, 64),
        _s({"n": 16}, 48, 256),
        _s({"n": 32}, 32, 512, top_p=0.9),
    ],
    "adaptive-best-of-n": [
        _s({"budget": 4}, 32, 64, prompts=2),
        _s({"budget": 8}, 32, 256, prompts=2),
        _s({"budget": 16}, 24, 512, prompts=2),
    ],
    "reward-guided": [
        _s({"k": 5}, 16, 64, reward="classifier"),
        _s({"k": 10}, 16, 256, reward="classifier", prompts=4),
        _s({"k": 20}, 16, 512, reward="classifier", prompts=8),
    ],
    "value-guided": [
        _s({"beams": 2, "samples": 2, **IVG}, 16, 64),
        _s({"beams": 4, "samples": 2, **IVG}, 16, 256),
        _s({"beams": 4, "samples": 4, **IVG}, 16, 512),
    ],
    "darwin": [
        _s({"n": 3, "k": 2, **DARWIN}, 16, 64),
        _s({"n": 5, "k": 3, **DARWIN}, 24, 256),
        _s({"n": 8, "k": 3, **DARWIN}, 24, 512),
    ],
    "sea": [
        _s({"chains": 2, **SEA}, 16, 64, reward="judge"),
        _s({"chains": 4, **SEA}, 24, 128, reward="judge"),
        _s({"chains": 8, **SEA}, 32, 128, reward="judge"),
    ],
}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _prompt(tokenizer, length: int, index: int) -> str:
    """A user message whose chat-templated rendering has about ``length`` tokens."""
    words = [f"word{index}x{i}" for i in range(length * 2)]
    text = " ".join(words)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max(length - 30, 1)]
    return tokenizer.decode(ids)


def measure_one(strategy_name: str, setting: dict, dtype: str) -> dict:
    """Runs inside the child process: build, measure, estimate."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForSequenceClassification

    from align_chains.engine import SamplingParams
    from align_chains.memory import estimate_memory
    from align_chains.models.embedded import converted_policy_dir
    from align_chains.models.policy import Policy
    from align_chains.rewards import CallableReward, ClassifierReward, JudgeReward
    from align_chains.strategies import get_strategy
    from align_chains.testing import tiny_llama_config

    torch.set_num_threads(1)
    path = converted_policy_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    config = AutoConfig.from_pretrained(str(path))
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    before_weights = _status("VmRSS")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype).eval()
    policy = Policy(model=model, tokenizer=tokenizer, name="smollm2-135m-shaped")
    kind = setting.get("reward", "callable")
    if kind == "classifier":
        torch.manual_seed(1)
        clf = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1)).to(torch_dtype)
        reward = ClassifierReward(clf, tokenizer, name="tiny-classifier")
    elif kind == "judge":
        reward = JudgeReward(policy)
    else:
        reward = CallableReward(lambda p, r: float(len(r)), name="length")
    weights_measured = _status("VmRSS") - before_weights

    strategy = get_strategy(strategy_name)(**setting["strategy"])
    params = SamplingParams(
        max_new_tokens=setting["max_new_tokens"], temperature=1.0, top_p=setting.get("top_p", 1.0), seed=0
    )
    prompts = [_prompt(tokenizer, setting["prompt_tokens"], i) for i in range(setting.get("prompts", 1))]
    lengths = [len(policy.render([{"role": "user", "content": p}])) for p in prompts]
    estimate = estimate_memory(strategy, policy, reward, params, lengths)

    import gc

    gc.collect()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    results = strategy.run_batch(prompts, policy, reward, params)
    peak = _status("VmHWM")
    request = max(peak - before, 0)
    generated = sum(r.counters.generated_tokens for r in results[:1])
    return {
        "strategy": strategy_name,
        "setting": setting,
        "dtype": dtype,
        "prompt_tokens": lengths,
        "rows": estimate.rows,
        "generated_tokens": generated,
        "measured_weights": weights_measured,
        "measured_request": request,
        "measured_total": weights_measured + request,
        "estimate": estimate.as_dict(),
    }


def run_child(strategy: str, index: int, dtype: str) -> dict:
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "MALLOC_TRIM_THRESHOLD_": "131072",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", strategy, str(index), dtype],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{strategy}[{index}] failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    mib = 1024**2
    lines = [
        "| strategy | setting | rows x tokens | estimate total (MiB) | measured total (MiB) | error | "
        "estimate request (MiB) | measured request (MiB) | error |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        est = r["estimate"]
        setting = ", ".join(
            f"{k}={v}" for k, v in r["setting"]["strategy"].items() if k not in ("revise", "principle")
        )
        setting += f", L={r['setting']['max_new_tokens']}, prompts={len(r['prompt_tokens'])}"
        if r["setting"].get("top_p"):
            setting += f", top_p={r['setting']['top_p']}"
        total_err = est["total"] / r["measured_total"] - 1
        req_err = est["request"] / max(r["measured_request"], 1) - 1
        lines.append(
            f"| {r['strategy']} | {setting} | {r['rows']} x {est['tokens']} | {est['total'] / mib:.0f} | "
            f"{r['measured_total'] / mib:.0f} | {total_err:+.0%} | {est['request'] / mib:.0f} | "
            f"{r['measured_request'] / mib:.0f} | {req_err:+.0%} |"
        )
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        strategy, index, dtype = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        print(json.dumps(measure_one(strategy, SETTINGS[strategy][index], dtype)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="*", default=list(SETTINGS))
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, help="write every measurement as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args()
    rows = []
    for strategy in args.strategies:
        for index in range(len(SETTINGS[strategy])):
            row = run_child(strategy, index, args.dtype)
            rows.append(row)
            est = row["estimate"]
            print(
                f"{strategy}[{index}]: estimate {est['total'] / 2**20:.0f} MiB vs measured "
                f"{row['measured_total'] / 2**20:.0f} MiB ({est['total'] / row['measured_total'] - 1:+.0%}); "
                f"request {est['request'] / 2**20:.0f} vs {row['measured_request'] / 2**20:.0f} MiB",
                flush=True,
            )
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    worst = max(abs(r["estimate"]["total"] / r["measured_total"] - 1) for r in rows)
    print(f"worst total error: {worst:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
