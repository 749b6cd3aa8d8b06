"""The GPU benchmark: every speed claim of the project, side by side, in one run of under 8 minutes.

Run it through ``benchmarks/gpu.sh`` (which installs carried wheels and checks for CUDA first)::

    bash benchmarks/gpu.sh bench-results/gpu                # on a CUDA machine, bf16
    bash benchmarks/gpu.sh /tmp/smoke --device cpu --smoke  # the whole path on CPU, tiny settings

Sections (``decode_limit``: decode-step milliseconds of random-weight models in three shapes
against the memory-bandwidth bound, see ``benchmarks/gpu_decode.py``; the other sections' ways
run interleaved, after one untimed warm-up, ``--repeats`` times; the
report gives median / min / max seconds and median ratios against the section's baseline):

- ``best_of_n``: the engine's Best-of-N vs HF ``generate(num_return_sequences=N)`` vs N
  sequential ``generate`` calls (one answer each, what N separate chat calls do);
- ``args``: ARGS with the incremental classifier scorer vs the naive one (a full reward forward
  per branch); both pick the same tokens;
- ``darwin``: DARWIN with cached candidates vs re-prefilling every m tokens (the authors' way);
- ``sea``: SEA's seconds per iteration (median) at the published length L=50;
- ``early_rejection``: the early-rejection strategy vs Best-of-N at the same N, if
  ``align_chains/strategies/early_rejection.py`` exists (built in parallel), else a note;
- ``bf16``: the Best-of-N engine in fp32 vs bf16, and how far bf16's candidate log-probs are
  from an fp32 forward of the same tokens.

The policy is ``--policy DIR`` if given, else the embedded SmolLM2-135M-Instruct if installed,
else a SmolLM2-135M-shaped model with RANDOM weights built from ``.gpu_assets/`` (written by
``benchmarks/gpu_prepare.sh``): timings depend on the shape, not the weights, but random weights
rarely stop early, so every answer runs to ``max_new_tokens``. Rewards need no extra weights:
a length function (Best-of-N, DARWIN), the policy as a classifier with a random head (ARGS),
the policy as its own judge (SEA). Writes ``gpu_bench.json`` and ``gpu_bench.md`` to the folder.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import inspect
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import machine
from gpu_decode import decode_limit, table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ASSETS = REPO / ".gpu_assets" / "smollm2-135m-instruct"
NO_CUDA = (
    "no CUDA device is visible (torch.cuda.is_available() is False). This benchmark measures the GPU "
    "path: run it on a machine with an NVIDIA GPU, or test the script itself on CPU with "
    "`--device cpu --smoke`."
)


@dataclass(frozen=True)
class Settings:
    """Sizes of every section: GPU-sized by default, tiny for ``--smoke``."""

    repeats: int = 3
    n: int = 16
    prompt_tokens: int = 512
    max_new_tokens: int = 128
    args_k: int = 10
    args_tokens: int = 64
    darwin_n: int = 5
    darwin_m: int = 16
    darwin_tokens: int = 64
    darwin_mutation_tokens: int = 96
    sea_chains: int = 4
    sea_iterations: int = 20
    sea_length: int = 50


GPU = Settings()
SMOKE = Settings(
    repeats=1,
    n=2,
    prompt_tokens=64,
    max_new_tokens=4,
    args_k=2,
    args_tokens=3,
    darwin_n=2,
    darwin_m=2,
    darwin_tokens=4,
    darwin_mutation_tokens=16,
    sea_chains=1,
    sea_iterations=2,
    sea_length=4,
)


def cuda_missing(device: str) -> bool:
    import torch

    return device.startswith("cuda") and not torch.cuda.is_available()


# -- loading ---------------------------------------------------------------------------------
# --smoke shrinks the random model to this (same code path, seconds instead of minutes on CPU,
# where bf16 matrix products are emulated and ~50x slower than fp32)
SMOKE_SHAPE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip


def load_bench_policy(spec: str | None, device: str, dtype: str, *, smoke: bool = False) -> tuple[Any, str]:
    """(policy, where it came from): ``--policy``, the embedded model, or random SmolLM2-shaped weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from align_chains.errors import ModelLoadError
    from align_chains.models.policy import Policy, load_policy
    from align_chains.settings import resolve_dtype

    if spec and spec != "random":
        return load_policy(spec, device=device, dtype=dtype), f"weights from {spec}"
    if spec is None and not smoke:
        try:
            policy = load_policy("smollm2", device=device, dtype=dtype)
            return policy, "embedded SmolLM2-135M-Instruct weights"
        except ModelLoadError as exc:
            print(f"gpu_bench: the embedded policy is unavailable ({exc})", file=sys.stderr)
    if not (ASSETS / "config.json").is_file():
        raise SystemExit(
            f"gpu_bench: {ASSETS} is missing: run `bash benchmarks/gpu_prepare.sh` where the embedded "
            "policy is installed, or pass --policy DIR."
        )
    config = AutoConfig.from_pretrained(str(ASSETS), **(SMOKE_SHAPE if smoke else {}))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, torch.device(device)))
    tokenizer = AutoTokenizer.from_pretrained(str(ASSETS))
    policy = Policy(model=model, tokenizer=tokenizer, name="smollm2-135m-shaped (random weights)")
    if smoke:
        return policy, "RANDOM weights, SmolLM2's tokenizer in a 2-layer model (--smoke): no figures"
    return policy, "RANDOM weights in SmolLM2-135M's shape (.gpu_assets): timings only"


def build_messages(policy: Any, target_tokens: int) -> tuple[list[dict[str, str]], int]:
    sys.path.insert(0, str(HERE))
    from bench_best_of_n import build_messages as build

    return build(policy, target_tokens)


# -- timing ----------------------------------------------------------------------------------
class Section:
    """Ways of one section, run interleaved after a warm-up; seconds include a device sync."""

    def __init__(self, name: str, device: str, repeats: int) -> None:
        self.name, self.device, self.repeats = name, device, repeats
        self.runs: list[dict[str, Any]] = []

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run(self, ways: dict[str, Callable[[int], dict[str, Any]]]) -> None:
        for repeat in range(-1, self.repeats):
            for way, fn in ways.items():
                self.sync()
                start = time.perf_counter()
                info = fn(max(repeat, 0))
                self.sync()
                seconds = time.perf_counter() - start
                self.runs.append({"way": way, "repeat": repeat, "seconds": seconds, **info})
                print(f"  {self.name:16s} {way:22s} repeat {repeat:2d}: {seconds:8.3f} s", flush=True)

    def summary(self, baseline: str | None = None) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for way in dict.fromkeys(r["way"] for r in self.runs):
            timed = [r for r in self.runs if r["way"] == way and r["repeat"] >= 0]
            seconds = [r["seconds"] for r in timed]
            out[way] = {
                "median_s": statistics.median(seconds),
                "min_s": min(seconds),
                "max_s": max(seconds),
                "generated_tokens": statistics.median(r.get("generated_tokens", 0) for r in timed),
            }
        if baseline in out:
            for way in out:
                out[way]["ratio_vs_" + baseline] = out[way]["median_s"] / out[baseline]["median_s"]
        return out


# -- sections --------------------------------------------------------------------------------
def best_of_n(ctx: dict[str, Any], s: Settings) -> dict[str, Any]:
    import torch

    from align_chains.engine import SamplingParams
    from align_chains.rewards import CallableReward
    from align_chains.strategies import BestOfN

    policy, device = ctx["policy"], ctx["device"]
    reward = CallableReward(lambda p, r: float(len(r)), name="length")
    messages, prompt_tokens = build_messages(policy, s.prompt_tokens)
    prompt_ids = torch.tensor([policy.render(messages)], device=policy.device)
    eos = set(policy.eos_token_ids)

    def engine(seed: int) -> dict[str, Any]:
        params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=0.7, seed=seed)
        result = BestOfN(n=s.n).run(messages, policy, reward, params)
        return {
            "generated_tokens": result.counters.generated_tokens,
            "forward_passes": result.counters.forward_passes,
        }

    def generate(rows: int, seed: int) -> int:
        torch.manual_seed(seed)
        out = policy.model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            do_sample=True,
            temperature=0.7,
            top_k=0,
            top_p=1.0,
            max_new_tokens=s.max_new_tokens,
            num_return_sequences=rows,
            pad_token_id=policy.pad_token_id,
        )
        new = out[:, prompt_ids.shape[1] :].tolist()
        texts = [policy.decode([t for t in ids if t not in eos]) for ids in new]
        reward.score([messages] * rows, texts)
        return sum(next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids)) for ids in new)

    def hf_generate(seed: int) -> dict[str, Any]:
        return {"generated_tokens": generate(s.n, seed)}

    def sequential(seed: int) -> dict[str, Any]:
        return {"generated_tokens": sum(generate(1, seed * 1000 + i) for i in range(s.n))}

    section = Section("best_of_n", device, s.repeats)
    section.run({"engine": engine, "hf_generate": hf_generate, "sequential_generate": sequential})
    return {
        "settings": {"n": s.n, "prompt_tokens": prompt_tokens, "max_new_tokens": s.max_new_tokens},
        "summary": section.summary("engine"),
        "runs": section.runs,
    }


def args_section(ctx: dict[str, Any], s: Settings) -> dict[str, Any]:
    from align_chains.engine import ComputeCounters, SamplingParams
    from align_chains.strategies import RewardGuided

    sys.path.insert(0, str(HERE))
    from bench_guided import PROMPT, smollm_classifier
    from reference.naive_args import NaiveClassifierScorer

    policy, device = ctx["policy"], ctx["device"]
    classifier = smollm_classifier(policy)
    classifier.model.to(policy.device)
    ids: dict[str, list[int]] = {}

    def way(naive: bool) -> Callable[[int], dict[str, Any]]:
        def run(seed: int) -> dict[str, Any]:
            params = SamplingParams(max_new_tokens=s.args_tokens, temperature=0.7, seed=seed)
            scorer = NaiveClassifierScorer(classifier, ComputeCounters()) if naive else None
            (r,) = RewardGuided(k=s.args_k).run_batch([PROMPT], policy, classifier, params, scorer=scorer)
            ids["naive" if naive else "incremental"] = r.best.token_ids
            return {"generated_tokens": len(r.trace)}

        return run

    section = Section("args", device, s.repeats)
    section.run({"incremental": way(False), "naive": way(True)})
    return {
        "settings": {"k": s.args_k, "max_new_tokens": s.args_tokens, "reward": classifier.name},
        "same_tokens": ids.get("naive") == ids.get("incremental"),
        "summary": section.summary("incremental"),
        "runs": section.runs,
    }


def darwin_section(ctx: dict[str, Any], s: Settings) -> dict[str, Any]:
    from align_chains.engine import SamplingParams
    from align_chains.rewards import CallableReward
    from align_chains.strategies import Darwin

    sys.path.insert(0, str(HERE))
    from bench_darwin import PROMPTS
    from reference.darwin_reprefill import DarwinReprefill

    policy, device = ctx["policy"], ctx["device"]
    reward = CallableReward(lambda p, r: float(len(set(r.split()))), name="distinct-words")
    settings = {
        "n": s.darwin_n,
        "m": s.darwin_m,
        "k": min(3, s.darwin_n),
        "cycles": 1,
        "mutation_max_tokens": s.darwin_mutation_tokens,
    }

    def way(cls: type) -> Callable[[int], dict[str, Any]]:
        def run(seed: int) -> dict[str, Any]:
            params = SamplingParams(max_new_tokens=s.darwin_tokens, temperature=0.7, top_k=40, seed=seed)
            r = cls(**settings).run(PROMPTS["context"], policy, reward, params)
            return {
                "generated_tokens": r.counters.generated_tokens,
                "prompt_tokens": r.counters.prompt_tokens,
            }

        return run

    section = Section("darwin", device, s.repeats)
    section.run({"cached": way(Darwin), "reprefill": way(DarwinReprefill)})
    return {
        "settings": {**settings, "max_new_tokens": s.darwin_tokens},
        "summary": section.summary("cached"),
        "runs": section.runs,
    }


def sea_section(ctx: dict[str, Any], s: Settings) -> dict[str, Any]:
    from align_chains.engine import SamplingParams
    from align_chains.rewards import JudgeReward
    from align_chains.strategies import SEA

    policy, device = ctx["policy"], ctx["device"]
    judge = JudgeReward(policy)
    details: list[dict[str, Any]] = []

    def run(seed: int) -> dict[str, Any]:
        params = SamplingParams(max_new_tokens=s.sea_length, temperature=0.8, seed=seed)
        strategy = SEA(chains=s.sea_chains, iterations=s.sea_iterations, patience=None, revise=False)
        r = strategy.run("Give me three tips for better sleep.", policy, judge, params)
        details.append(r.details)
        return {
            "generated_tokens": r.counters.generated_tokens,
            "seconds_per_iteration": r.details["seconds_per_iteration"],
            "decode_passes_per_iteration": r.details["decode_passes_per_iteration"],
        }

    section = Section("sea", device, s.repeats)
    section.run({"sea": run})
    timed = [r for r in section.runs if r["repeat"] >= 0]
    return {
        "settings": {
            "chains": s.sea_chains,
            "iterations": s.sea_iterations,
            "L": s.sea_length,
            "reward": judge.name,
        },
        "seconds_per_iteration_median": statistics.median(r["seconds_per_iteration"] for r in timed),
        "summary": section.summary(),
        "runs": section.runs,
    }


def early_rejection_section(ctx: dict[str, Any], s: Settings) -> dict[str, Any]:
    if importlib.util.find_spec("align_chains.strategies.early_rejection") is None:
        return {
            "skipped": "align_chains/strategies/early_rejection.py is absent from this checkout (it is "
            "being built in parallel); rerun once it is merged."
        }
    module = importlib.import_module("align_chains.strategies.early_rejection")
    from align_chains.engine import SamplingParams
    from align_chains.rewards import CallableReward
    from align_chains.strategies import BestOfN, Strategy

    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, Strategy) and c is not Strategy and c.__module__ == module.__name__
    ]
    if not classes:
        return {"skipped": f"{module.__name__} defines no Strategy subclass"}
    cls = classes[0]
    policy, device = ctx["policy"], ctx["device"]
    reward = CallableReward(lambda p, r: float(len(r)), name="length")
    messages, prompt_tokens = build_messages(policy, s.prompt_tokens)
    kwargs = {"n": s.n} if "n" in cls.model_fields else {}

    def way(strategy: Any) -> Callable[[int], dict[str, Any]]:
        def run(seed: int) -> dict[str, Any]:
            params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=0.7, seed=seed)
            r = strategy.run(messages, policy, reward, params)
            return {"generated_tokens": r.counters.generated_tokens, "reward": r.reward}

        return run

    section = Section("early_rejection", device, s.repeats)
    section.run({"best_of_n": way(BestOfN(n=s.n)), cls.name: way(cls(**kwargs))})
    return {
        "settings": {
            "strategy": cls.name,
            **kwargs,
            "prompt_tokens": prompt_tokens,
            "max_new_tokens": s.max_new_tokens,
        },
        "summary": section.summary("best_of_n"),
        "runs": section.runs,
    }


def bf16_section(ctx: dict[str, Any], s: Settings) -> dict[str, Any]:
    import torch

    from align_chains.engine import SamplingParams
    from align_chains.models.policy import Policy
    from align_chains.rewards import CallableReward
    from align_chains.strategies import BestOfN

    policy, device = ctx["policy"], ctx["device"]
    if policy.model.dtype != torch.bfloat16:
        return {"skipped": f"the policy runs in {policy.model.dtype}; pass --dtype bf16 for this section"}
    fp32 = Policy(
        model=copy.deepcopy(policy.model).float(), tokenizer=policy.tokenizer, name=policy.name + " fp32"
    )
    reward = CallableReward(lambda p, r: float(len(r)), name="length")
    messages, prompt_tokens = build_messages(policy, s.prompt_tokens)
    results: dict[str, Any] = {}

    def way(p: Any, tag: str) -> Callable[[int], dict[str, Any]]:
        def run(seed: int) -> dict[str, Any]:
            params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=0.7, seed=seed)
            results[tag] = BestOfN(n=s.n).run(messages, p, reward, params)
            return {"generated_tokens": results[tag].counters.generated_tokens}

        return run

    section = Section("bf16", device, s.repeats)
    section.run({"bf16": way(policy, "bf16"), "fp32": way(fp32, "fp32")})
    prompt = policy.render(messages)
    diffs = []
    for c in results["bf16"].candidates[:4]:
        if not c.token_ids:
            continue
        ids = torch.tensor([prompt + c.token_ids], device=policy.device)
        with torch.no_grad():
            logits = fp32.model(ids).logits[0, len(prompt) - 1 : -1].float()
        ref = torch.log_softmax(logits, -1).gather(
            -1, torch.tensor(c.token_ids, device=policy.device)[:, None]
        )
        diffs.append((torch.tensor(c.logprobs, device=policy.device) - ref.squeeze(-1)).abs())
    diff = torch.cat(diffs) if diffs else torch.zeros(1)
    del fp32
    return {
        "settings": {"n": s.n, "prompt_tokens": prompt_tokens, "max_new_tokens": s.max_new_tokens},
        "logprob_vs_fp32_max": float(diff.max()),
        "logprob_vs_fp32_mean": float(diff.mean()),
        "summary": section.summary("fp32"),
        "runs": section.runs,
    }


SECTIONS: dict[str, Callable[[dict[str, Any], Settings], dict[str, Any]]] = {
    "decode_limit": decode_limit,  # first: the time limit never skips it
    "best_of_n": best_of_n,
    "args": args_section,
    "darwin": darwin_section,
    "sea": sea_section,
    "early_rejection": early_rejection_section,
    "bf16": bf16_section,
}


# -- report ----------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"GPU benchmark: {env['device_name']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['dtype']}; policy: {env['policy']} ({env['weights']}); "
        f"{report['total_seconds']:.0f} s in all.",
        "",
        "| section | way | median s | min s | max s | ratio | tokens generated |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    tables = []
    for name, section in report["sections"].items():
        if "rows" in section and "bandwidth_gb_s" in section:
            tables.append(table(section))
            notes.append(f"- {name} settings: {section['settings']}")
            continue
        if "summary" not in section:
            notes.append(f"- {name}: {section.get('skipped') or section.get('error', '').splitlines()[0]}")
            continue
        for way, row in section["summary"].items():
            ratio = next((f"{v:.2f}x vs {k[9:]}" for k, v in row.items() if k.startswith("ratio_vs_")), "")
            lines.append(
                f"| {name} | {way} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} | "
                f"{ratio} | {row['generated_tokens']:.0f} |"
            )
        if "same_tokens" in section:
            notes.append(
                f"- args: incremental and naive scoring picked the same tokens: {section['same_tokens']}"
            )
        if "seconds_per_iteration_median" in section:
            notes.append(
                f"- sea: {section['seconds_per_iteration_median'] * 1000:.1f} ms per iteration (median)"
            )
        if "logprob_vs_fp32_max" in section:
            notes.append(
                f"- bf16: candidate log-probs vs an fp32 forward: max {section['logprob_vs_fp32_max']:.3f}, "
                f"mean {section['logprob_vs_fp32_mean']:.4f} nats per token"
            )
        notes.append(f"- {name} settings: {section['settings']}")
    if len(lines) == 4:  # no timed section but the decode table: print that table alone
        lines = lines[:2]
    return "\n".join([*lines, *tables, "", *notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("bench-results/gpu"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument(
        "--policy",
        help="A model directory, or 'random' for SmolLM2-135M's shape with random weights "
        "(default: the embedded policy if installed, else 'random').",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="Tiny settings: test the script path, no figures."
    )
    parser.add_argument("--repeats", type=int)
    parser.add_argument(
        "--compile-generate",
        action="store_true",
        help="decode_limit: let transformers compile generate's forward (minutes per batch size).",
    )
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument(
        "--time-limit-s", type=float, default=450.0, help="Skip sections not started by then."
    )
    args = parser.parse_args(argv)
    if cuda_missing(args.device):
        print(f"gpu_bench: {NO_CUDA}", file=sys.stderr)
        return 2
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    settings = SMOKE if args.smoke else GPU
    if args.repeats is not None:
        settings = Settings(**{**asdict(settings), "repeats": args.repeats})
    begin = time.perf_counter()
    policy, weights = load_bench_policy(args.policy, args.device, args.dtype, smoke=args.smoke)
    print(f"gpu_bench: {policy.name} on {policy.device} in {policy.model.dtype} ({weights})", flush=True)
    ctx = {
        "policy": policy,
        "device": args.device,
        "dtype": args.dtype,
        "smoke": args.smoke,
        "compile_generate": args.compile_generate,
    }
    report: dict[str, Any] = {
        "environment": machine(
            device=args.device,
            device_name=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            transformers=transformers.__version__,
            dtype=str(policy.model.dtype).removeprefix("torch."),
            policy=policy.name,
            weights=weights,
            smoke=args.smoke,
        ),
        "settings": asdict(settings),
        "sections": {},
    }
    failed = []
    for name in args.sections:
        if time.perf_counter() - begin > args.time_limit_s:
            report["sections"][name] = {"skipped": f"time limit of {args.time_limit_s:.0f} s reached"}
            continue
        print(f"gpu_bench: section {name}", flush=True)
        try:
            report["sections"][name] = SECTIONS[name](ctx, settings)
        except Exception as exc:  # one broken section must not lose the others' figures
            traceback.print_exc()
            report["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        if args.device.startswith("cuda"):
            report["sections"][name]["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
    report["total_seconds"] = time.perf_counter() - begin
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "gpu_bench.md").write_text(markdown(report))
    print(markdown(report))
    print(f"gpu_bench: wrote {args.out}/gpu_bench.json and gpu_bench.md in {report['total_seconds']:.0f} s")
    if failed:
        print(f"gpu_bench: sections failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
