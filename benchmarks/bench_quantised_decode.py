"""Quantised weights in our engine's decode step on CPU: fp32, bf16 and int8/int4 ways side by side.

A decode step reads every weight once, so on a CPU it is bound by the bytes the weights take;
batched llama.cpp beats our fp32/bf16 engine at sampling (docs/benchmarks.md, issue 28) because
it reads Q4_1 blocks. This measures the embedded SmolLM2-135M (``load_policy``) with its linear
layers (attention, MLP and the tied vocabulary projection, as its own copy; the embedding
stays float) through the kernels PyTorch and torchao maintain, interleaved round by round
after a warm-up, on a short and a long prompt:

- ``engine_fp32``, ``engine_bf16``: the weights as loaded, fp32 / bf16;
- ``ao_dynamic_int8``: ``torch.ao.quantization.quantize_dynamic`` (int8 weights with one scale
  per output channel, activations quantised per tensor on the fly; fbgemm/oneDNN int8 kernels);
- ``torchao_int8``: torchao's ``Int8DynamicActivationInt8WeightConfig`` (per-token activation
  scales), eager: no ``torch.compile`` (needs torchao);
- ``weight_int8_bf16``: int8 weights (per-channel scales), bf16 activations, through aten's
  ``_weight_int8pack_mm`` (the kernel torchao's int8 weight-only path calls on CPU);
- ``weight_int4_bf16``: 4-bit weights in groups of 32 (a scale and an offset each, like the
  GGUF's Q4_1), bf16 activations, through aten's ``_weight_int4pack_mm_for_cpu``.

Per way and prompt: the milliseconds of one decode step of 8 rows (``Decoder.extend`` by one
token, median over ``--steps`` steps per round), and the seconds of an end-to-end Best-of-8
sample of ``--tokens`` tokens (``Decoder.generate``, temperature 0.7; sampling only, no
reward); medians over the rounds and ratios against the first way. Agreement with fp32: the
fp32 engine's 8 seeded samples are fed back teacher-forced through every way; reported are
the mean and largest |Δ log p| of the sampled tokens and the share of positions where the
most likely next token is the same as fp32's::

    OMP_NUM_THREADS=1 python benchmarks/bench_quantised_decode.py --repeats 3 \\
        --json docs/bench_quantised_decode.json
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from bench_best_of_n import build_messages
from common import add_common_options, interleaved, machine, machine_line, positive_int, ratio, write_json

from align_chains import Decoder, Policy, SamplingParams, load_policy
from align_chains.engine.forward import prefill_left_padded
from align_chains.engine.sampling import make_generator

ROWS = 8
TEMPERATURE = 0.7
WAYS = (
    "engine_fp32",
    "engine_bf16",
    "ao_dynamic_int8",
    "torchao_int8",
    "weight_int8_bf16",
    "weight_int4_bf16",
)
SHORT = [{"role": "user", "content": "Give me three short tips for writing a clear bug report."}]


class WeightInt8(torch.nn.Module):
    """A linear layer with int8 weights (one scale per output channel) through ``_weight_int8pack_mm``."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1).clamp(min=1e-8) / 127
        quantised = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("packed", quantised.contiguous())
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.out_features, self.bias = linear.out_features, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch._weight_int8pack_mm(flat, self.packed, self.scale).reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


class WeightInt4(torch.nn.Module):
    """A linear layer with 4-bit weights in groups of 32 (scale and offset per group) through
    ``_weight_int4pack_mm_for_cpu``."""

    GROUP = 32

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        rows, cols = weight.shape
        groups = weight.reshape(rows, cols // self.GROUP, self.GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-6)
        levels = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
        packed = torch._convert_weight_to_int4pack_for_cpu(levels.to(torch.int32).reshape(rows, cols), 2)
        self.register_buffer("packed", packed)
        # aten's layout: [groups, rows, (scale, zero)], a weight being (level - 8) * scale + zero
        zeros = torch.stack([scale, low + 8 * scale], -1).transpose(0, 1).contiguous()
        self.register_buffer("scales_and_zeros", zeros.to(linear.weight.dtype))
        self.out_features, self.bias = linear.out_features, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.GROUP, self.scales_and_zeros)
        out = out.reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


def replace_linears(model: torch.nn.Module, make: Callable[[torch.nn.Linear], torch.nn.Module]) -> None:
    """Every ``nn.Linear`` of ``model`` replaced by ``make(linear)`` (the tied head too)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, make(child))


def quantised(base: Policy, way: str) -> Policy:
    """A copy of ``base`` (fp32) with its linear layers quantised the way ``way`` names."""
    model = copy.deepcopy(base.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager quantisation is marked deprecated
        if way == "ao_dynamic_int8":
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
        elif way == "torchao_int8":
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            quantize_(model, Int8DynamicActivationInt8WeightConfig())
        else:
            model = model.to(torch.bfloat16)
            replace_linears(model, WeightInt8 if way == "weight_int8_bf16" else WeightInt4)
    return Policy(model=model, tokenizer=base.tokenizer, name=f"{base.name} ({way})")


def load_ways(ways: list[str]) -> dict[str, Policy]:
    """Each way's policy (the fp32 one always: it is the agreement reference)."""
    policies = {"engine_fp32": load_policy(dtype="fp32")}
    for way in ways:
        if way == "engine_bf16":
            policies[way] = load_policy(dtype="bf16")
        elif way != "engine_fp32":
            policies[way] = quantised(policies["engine_fp32"], way)
    return policies


def step_ms(policy: Policy, prompt: list[int], steps: int, seed: int) -> list[float]:
    """Milliseconds of each of ``steps`` decode steps of 8 rows after one prefill."""
    decoder = Decoder(policy)
    params = SamplingParams(max_new_tokens=steps + 1, temperature=TEMPERATURE, seed=seed)
    batch = decoder.start([prompt], ROWS, params)
    generator = make_generator(seed, policy.device)
    decoder.extend(batch, 1, generator, compact=False)  # samples from the prefill's logits: no forward
    times = []
    for _ in range(steps):  # each feeds the pending token: one forward of 8 rows, then a sample
        start = time.perf_counter()
        decoder.extend(batch, 1, generator, compact=False)  # every row stays: the same 8-row step
        times.append((time.perf_counter() - start) * 1000)
    return times


def best_of_8(policy: Policy, prompt: list[int], tokens: int, seed: int) -> tuple[float, int]:
    """Seconds and tokens of 8 samples of up to ``tokens`` tokens (one prefill, one batch)."""
    params = SamplingParams(max_new_tokens=tokens, temperature=TEMPERATURE, seed=seed)
    start = time.perf_counter()
    done = Decoder(policy).generate([prompt], ROWS, params)
    return time.perf_counter() - start, sum(c.generated_tokens for c in done)


def teacher_forced(policy: Policy, prompt: list[int], answers: list[list[int]]) -> tuple[torch.Tensor, ...]:
    """Log p of each answer token and the most likely token at its position, all rows flat."""
    keep = max(len(a) for a in answers) + 1
    out = prefill_left_padded(
        policy.model, [prompt + a for a in answers], policy.pad_token_id, policy.device, logits_to_keep=keep
    )
    logprobs = torch.log_softmax(out.logits.float(), dim=-1)
    taken, top = [], []
    for row, answer in enumerate(answers):  # a few rows, once per way: not a decode step
        at = logprobs[row, keep - 1 - len(answer) : keep - 1]
        taken.append(at.gather(-1, torch.tensor(answer)[:, None])[:, 0])
        top.append(at.argmax(-1))
    return torch.cat(taken), torch.cat(top)


def agreement(policies: dict[str, Policy], prompt: list[int], tokens: int, seed: int) -> dict[str, Any]:
    """Every way against fp32 on the fp32 engine's own 8 samples, teacher-forced."""
    params = SamplingParams(max_new_tokens=tokens, temperature=TEMPERATURE, seed=seed)
    answers = [c.token_ids for c in Decoder(policies["engine_fp32"]).generate([prompt], ROWS, params)]
    answers = [a for a in answers if a] or [[policies["engine_fp32"].eos_token_ids[0]]]
    ref_lp, ref_top = teacher_forced(policies["engine_fp32"], prompt, answers)
    result = {}
    for way, policy in policies.items():
        lp, top = teacher_forced(policy, prompt, answers)
        delta = (lp - ref_lp).abs()
        result[way] = {
            "positions": int(lp.numel()),
            "mean_abs_dlogprob": float(delta.mean()),
            "max_abs_dlogprob": float(delta.max()),
            "top1_agreement": float((top == ref_top).float().mean()),
        }
    return result


def measure(policies: dict[str, Policy], prompt: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Every way on one prompt, interleaved; medians and ratios against the first way."""
    steps: dict[str, list[float]] = {way: [] for way in args.ways}
    seconds: dict[str, list[float]] = {way: [] for way in args.ways}
    sampled: dict[str, list[int]] = {way: [] for way in args.ways}
    for repeat, way in interleaved(args.repeats, args.ways):
        seed = args.seed + max(repeat, 0)
        step_times = step_ms(policies[way], prompt, args.steps, seed)
        elapsed, tokens = best_of_8(policies[way], prompt, args.tokens, seed)
        if repeat >= 0:
            steps[way].append(statistics.median(step_times))
            seconds[way].append(elapsed)
            sampled[way].append(tokens)
        print(
            f"  {len(prompt)}-token prompt, {way:16s} repeat {repeat:2d}: step "
            f"{statistics.median(step_times):6.1f} ms, best-of-8 {elapsed:6.2f} s ({tokens} tokens)",
            flush=True,
        )
    base_step, base_s = statistics.median(steps[args.ways[0]]), statistics.median(seconds[args.ways[0]])
    return {
        way: {
            "step_ms": statistics.median(steps[way]),
            "step_ms_rounds": steps[way],
            "best_of_8_s": statistics.median(seconds[way]),
            "best_of_8_s_rounds": seconds[way],
            "tokens_median": statistics.median(sampled[way]),
            "step_speedup": ratio(base_step, statistics.median(steps[way])),
            "best_of_8_speedup": ratio(base_s, statistics.median(seconds[way])),
        }
        for way in args.ways
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_options(parser, repeats=5)
    parser.add_argument("--tokens", type=positive_int, default=32, help="tokens per sample at most")
    parser.add_argument("--steps", type=positive_int, default=16, help="decode steps timed per round")
    parser.add_argument(
        "--ways", nargs="+", default=list(WAYS), choices=WAYS, help="the first is the baseline"
    )
    args = parser.parse_args()
    load_before = list(os.getloadavg())
    policies = load_ways(args.ways)
    fp32 = policies["engine_fp32"]
    long_messages, _ = build_messages(fp32, 507)
    prompts = {"short": fp32.render(SHORT), "long": fp32.render(long_messages)}
    results: dict[str, Any] = {"machine": machine(rows=ROWS), "args": vars(args)}
    for name, prompt in prompts.items():
        results[name] = {
            "prompt_tokens": len(prompt),
            "ways": measure(policies, prompt, args),
            "agreement_vs_fp32": agreement(policies, prompt, args.tokens, args.seed),
        }
    results["load_before"], results["load_after"] = load_before, list(os.getloadavg())
    print(machine_line(results["machine"]))
    print(f"# load average before {load_before}, after {results['load_after']}")
    for name in prompts:
        part = results[name]
        for way, row in part["ways"].items():
            agree = part["agreement_vs_fp32"][way]
            print(
                f"{part['prompt_tokens']:4d}-token prompt {way:16s} step {row['step_ms']:6.1f} ms "
                f"({row['step_speedup']:.2f}x), best-of-8 {row['best_of_8_s']:5.2f} s "
                f"({row['best_of_8_speedup']:.2f}x); vs fp32: mean |dlogp| "
                f"{agree['mean_abs_dlogprob']:.4f}, max {agree['max_abs_dlogprob']:.3f}, "
                f"top-1 {agree['top1_agreement']:.3f}"
            )
    write_json(args.json, results)


if __name__ == "__main__":
    main()
