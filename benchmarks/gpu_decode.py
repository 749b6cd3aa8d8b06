"""The decode step against the memory-bandwidth bound, in the shapes people run (a gpu_bench section).

For random-weight models in the shapes of SmolLM2-135M, SmolLM2-1.7B and Llama-3.1-8B (the
``--dtype``, bf16 by default; random weights because real ones cannot travel to the GPU machine:
timings depend on the shape only), at batch 1, 8 and 32 after one ``PROMPT_TOKENS`` prefill:

- ``engine``: the median milliseconds between two decode steps of ``Decoder.extend`` (forward,
  sampling, bookkeeping);
- ``generate_static``: transformers' ``generate`` with ``cache_implementation="static"``: (time of
  1 + ``steps`` new tokens - time of 1 new token) / ``steps``, so its prefill is left out
  (``--compile-generate`` lets transformers compile its forward; off by default, to fit the
  time budget);
- ``bound``: the milliseconds to read the weights once plus every row's KV cache once (at the
  mean context of the steps) at the card's bandwidth, measured with a device-to-device copy.

A step can never beat the bound on this card; the ratio says how far from it the step runs
(vLLM and SGLang run decode steps as CUDA graphs close to it). On CPU (``--device cpu
--smoke``), the shapes shrink to two narrow layers: the path is tested, the figures mean nothing.
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

PROMPT_TOKENS = 512
BATCHES = (1, 8, 32)
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "tie_word_embeddings": True},
    "smollm2-1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                     "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49152,
                     "tie_word_embeddings": True},
    "llama3.1-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                    "tie_word_embeddings": False},
}  # fmt: skip
SMOKE_OVERRIDES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048}  # fmt: skip


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_bandwidth(device: str, megabytes: int) -> float:
    """Bytes per second a device-to-device copy moves (read + write), median of 10 copies."""
    import torch

    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    times = []
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        target.copy_(source)
        sync(device)
        times.append(time.perf_counter() - start)
    del source, target
    return 2 * megabytes * 2**20 / statistics.median(times)


def random_policy(shape: dict[str, Any], tokenizer: Any, device: str, dtype: str, name: str) -> Any:
    """A Llama of ``shape`` with random weights on ``device``, wrapped as a ``Policy``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from align_chains.models.policy import Policy
    from align_chains.settings import resolve_dtype

    config = LlamaConfig(
        **shape,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, torch.device(device)))
    return Policy(model=model, tokenizer=tokenizer, name=f"{name}-shaped (random weights)")


def bound_bytes(model: Any, batch: int, context: float) -> float:
    """Bytes one decode step must read: every weight once (the input embedding only a row per
    sequence, unless tied to the output) plus each row's keys and values."""
    config = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    if embedding is not model.get_output_embeddings().weight:
        weights -= embedding.numel() * embedding.element_size()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim
    return weights + per_token * embedding.element_size() * context * batch


def engine_step_s(policy: Any, prompt: list[int], batch: int, steps: int) -> float:
    """Median seconds between two decode steps of the engine, ``batch`` rows after one prefill."""
    from align_chains.engine import Decoder, SamplingParams, make_generator

    device = str(policy.device)
    marks: list[float] = []

    def mark(_batch: Any) -> None:
        sync(device)
        marks.append(time.perf_counter())

    decoder = Decoder(policy)
    params = SamplingParams(max_new_tokens=steps + 1, temperature=0.7, seed=0)
    rows = decoder.start([prompt], batch, params)
    decoder.extend(rows, generator=make_generator(0, policy.device), on_step=mark)
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    return statistics.median(gaps) if gaps else float("nan")  # every row ended at once: no figure


def generate_step_s(policy: Any, prompt: list[int], batch: int, steps: int, compile_: bool) -> float:
    """Seconds per decode step of ``generate`` with a static cache, its prefill subtracted."""
    import torch

    device = str(policy.device)
    ids = torch.tensor([prompt] * batch, device=policy.device)

    def run(new: int) -> float:
        sync(device)
        start = time.perf_counter()
        policy.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7, top_k=0,
            max_new_tokens=new, min_new_tokens=new, cache_implementation="static",
            disable_compile=not compile_, pad_token_id=policy.pad_token_id,
        )  # fmt: skip
        sync(device)
        return time.perf_counter() - start

    run(steps + 1)  # warm-up (and the compilation, if any)
    return max(0.0, run(steps + 1) - run(1)) / steps


def decode_limit(ctx: dict[str, Any], settings: Any) -> dict[str, Any]:
    """The section: one row per (shape, batch) with engine, generate and bound milliseconds."""
    import torch

    device, smoke = ctx["device"], ctx.get("smoke", False)
    dtype, tokenizer = ctx.get("dtype", "bf16"), ctx["policy"].tokenizer
    steps = 4 if smoke else 32
    bandwidth = measure_bandwidth(device, 32 if smoke else 1024)
    generator = torch.Generator().manual_seed(0)
    high = SMOKE_OVERRIDES["vocab_size"] if smoke else 40000  # ids the tokenizer and every shape know
    prompt = torch.randint(100, high, (16 if smoke else PROMPT_TOKENS,), generator=generator).tolist()
    rows = []
    for name, shape in SHAPES.items():
        sized = {**shape, **(SMOKE_OVERRIDES if smoke else {})}
        policy = random_policy(sized, tokenizer, device, dtype, name)
        for batch in BATCHES:
            engine = engine_step_s(policy, prompt, batch, steps)
            generate = generate_step_s(policy, prompt, batch, steps, ctx.get("compile_generate", False))
            bound = bound_bytes(policy.model, batch, len(prompt) + steps / 2) / bandwidth
            rows.append({"shape": name, "batch": batch, "engine_ms": 1e3 * engine,
                         "generate_static_ms": 1e3 * generate, "bound_ms": 1e3 * bound,
                         "engine_vs_bound": engine / bound,
                         "generate_vs_bound": generate / bound})  # fmt: skip
            print(f"  decode_limit {name} batch {batch}: engine {1e3 * engine:.2f} ms, "
                  f"generate {1e3 * generate:.2f} ms, bound {1e3 * bound:.2f} ms", flush=True)  # fmt: skip
        del policy
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {
        "settings": {"prompt_tokens": len(prompt), "steps": steps, "dtype": dtype, "smoke": smoke},
        "bandwidth_gb_s": bandwidth / 1e9,
        "rows": rows,
    }


def table(section: dict[str, Any]) -> str:
    """The section's one Markdown table."""
    lines = [
        f"Decode step vs the bandwidth bound ({section['bandwidth_gb_s']:.0f} GB/s measured by a device "
        f"copy; prompt {section['settings']['prompt_tokens']} tokens, {section['settings']['steps']} steps):",
        "",
        "| shape | batch | engine ms | generate (static cache) ms | bound ms | engine / bound "
        "| generate / bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['engine_ms']:.2f} | {r['generate_static_ms']:.2f} | "
            f"{r['bound_ms']:.3f} | {r['engine_vs_bound']:.1f}x | {r['generate_vs_bound']:.1f}x |"
        )
    return "\n".join(lines) + "\n"
