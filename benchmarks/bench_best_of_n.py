"""Best-of-8 wall-clock benchmark: our engine vs. HF ``generate`` vs. eight sequential chat calls.

All three ways run in one process on the embedded default policy (SmolLM2-135M-Instruct) and
the embedded MiniLM embedding reward, on the same already-loaded model object, so model loading
is never timed. Each way samples 8 candidates for one ~512-token chat prompt (32 new tokens,
temperature 0.7, no top-k / top-p filtering, stop at EOS), scores all 8 in one batched reward
call and keeps the best:

- ``engine``: ``BestOfN(n=8).run(...)``: prefills the prompt once, expands the KV cache to 8 rows;
- ``hf_generate``: ``model.generate(..., num_return_sequences=8)``, which copies the prompt to
  8 rows before prefilling, so it prefills 8 x 512 tokens;
- ``sequential_chat``: ``ChatHuggingFace(HuggingFacePipeline(pipeline(...))).invoke`` eight
  times, the way a LangChain user samples N answers today.

After one untimed warm-up of each way, ``--repeats`` rounds run the three ways interleaved
(engine, hf_generate, sequential_chat, engine, ...) so that machine noise hits all of them alike;
the report gives median / min / max seconds and the median ratios against the engine. A forward
hook on the model counts the forward passes and prefilled prompt tokens of every way.

Run from the repository root (needs the ``bench`` extra: ``pip install -e .[bench]``)::

    python benchmarks/bench_best_of_n.py --repeats 5
    python benchmarks/bench_best_of_n.py --repeats 5 --json bench_best_of_n.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from common import (
    add_common_options,
    interleaved,
    machine,
    machine_line,
    medians,
    ratio,
    ratio_line,
    spread,
    status,
    write_json,
)

N = 8
WAYS = ("engine", "hf_generate", "sequential_chat")

DOCUMENT_SENTENCES = [
    "Incident report INC-2291: checkout latency regression, prepared by the payments platform team.",
    "On Tuesday at 09:42 UTC the p99 latency of the checkout API rose from 380 ms to 4.1 s.",
    "The regression lasted 3 hours and 12 minutes and affected roughly 18 percent of checkout attempts.",
    "About 2,300 orders failed outright with a gateway timeout, and customers saw a generic error page.",
    "The on-call engineer was paged by the latency alert at 09:47 and opened an incident channel at 09:51.",
    "Initial suspicion fell on the card processor, because its status page reported degraded performance.",
    "That lead was dropped at 10:20, when traces showed the time was spent inside our own order service.",
    "The order service had been deployed at 09:35 with release 4.18, which added a fraud-scoring step.",
    "The new step called the risk service synchronously for every cart item instead of once per order.",
    "Large carts therefore made dozens of sequential network calls, each taking between 40 and 90 ms.",
    "The risk service itself stayed healthy, but its connection pool of 50 connections was saturated.",
    "Requests queued behind the pool, and the queueing delay spread to small carts as well.",
    "A rollback of release 4.18 was proposed at 10:35 but delayed, because the release also carried a "
    "database migration that had already run.",
    "The team confirmed at 11:40 that the migration was backward compatible and rolled back at 11:52.",
    "Latency returned to normal by 12:54, after the connection pool drained and caches warmed again.",
    "No payment data was lost and no customer was charged twice; the failed orders were never captured.",
    "Customer support received 640 tickets during the incident and answered them with a prepared macro.",
    "Finance estimates the lost revenue at 210,000 euros, of which about a third may be recovered by "
    "an apology e-mail with a discount code.",
    "Contributing factors were the missing load test for large carts and the absence of a per-item "
    "latency budget in the design review.",
    "The canary stage covered only 2 percent of traffic for ten minutes, too short to catch the "
    "problem, since large carts are rare in the morning.",
    "Alerting worked as intended, but the runbook pointed to the card processor first, which cost "
    "about thirty minutes.",
    "Action items: batch the risk-service calls per order, owned by the fraud team, due in two weeks.",
    "Add a load test with carts of 50 or more items to the release pipeline, owned by the QA team.",
    "Extend the canary stage to one hour and 10 percent of traffic for services on the checkout path.",
    "Rewrite the checkout runbook so that recent deploys are checked before third-party dependencies.",
    "Split database migrations from application releases so that rollbacks are never blocked again.",
    "Review connection-pool sizing for every synchronous dependency of the order service.",
    "The postmortem review is scheduled for Friday; all action items are tracked in the PAY project.",
]
QUESTION = (
    "Based on the incident report above, what was the root cause of the checkout latency "
    "regression, and why did the rollback take so long? Answer in two sentences."
)


def build_messages(policy: Any, target_tokens: int) -> tuple[list[dict[str, str]], int]:
    """A user turn (document, then a question) whose rendered prompt is closest to ``target_tokens``."""
    best: tuple[list[dict[str, str]], int] | None = None
    for k in range(1, len(DOCUMENT_SENTENCES) + 1):
        document = " ".join(DOCUMENT_SENTENCES[:k])
        messages = [{"role": "user", "content": f"{document}\n\n{QUESTION}"}]
        length = len(policy.render(messages))
        if best is None or abs(length - target_tokens) < abs(best[1] - target_tokens):
            best = (messages, length)
        if length >= target_tokens:
            break
    assert best is not None
    return best


@dataclass
class ForwardMeter:
    """Counts policy forward passes and the tokens fed to them (a forward hook on the model)."""

    forward_passes: int = 0
    prefill_tokens: int = 0  # tokens fed by forwards with more than one position (prompt prefill)

    def hook(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], _output: Any) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.forward_passes += 1
        if input_ids is not None and input_ids.shape[-1] > 1:
            self.prefill_tokens += input_ids.numel()


@dataclass
class Run:
    """One Best-of-8 run of one way."""

    way: str
    repeat: int  # -1 for the warm-up
    seconds: float
    tokens_per_candidate: list[int]  # sampled tokens per candidate, EOS included
    forward_passes: int
    prefill_tokens: int
    best_reward: float
    best_text: str
    candidates: list[str]
    engine_counters: dict[str, float | int] = field(default_factory=dict)

    @property
    def mean_tokens(self) -> float:
        return statistics.fmean(self.tokens_per_candidate)


@dataclass
class Outcome:
    """What one way returns before the meter's counts are added."""

    tokens_per_candidate: list[int]
    best_reward: float
    best_text: str
    candidates: list[str]
    engine_counters: dict[str, float | int] = field(default_factory=dict)


def pick_best(scores: list[float]) -> int:
    """Index of the highest score, ties to the earliest (as BestOfN does)."""
    return max(range(len(scores)), key=lambda j: (scores[j], -j))


class Bench:
    """Holds the shared policy, reward, prompt and the three Best-of-8 implementations."""

    def __init__(self, target_tokens: int, max_new_tokens: int, temperature: float) -> None:
        import transformers
        from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline

        from align_chains import load_policy, load_reward

        transformers.logging.set_verbosity_error()
        self.policy = load_policy()
        self.reward = load_reward()
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.messages, self.prompt_tokens = build_messages(self.policy, target_tokens)
        self.prompt_ids = torch.tensor([self.policy.render(self.messages)], device=self.policy.device)
        self.eos = set(self.policy.eos_token_ids)

        # The LangChain way, built once on the same model object (setup, not timed). Passing the
        # tokenizer keeps ChatHuggingFace from loading one by model id (a Hub lookup otherwise).
        pipe = transformers.pipeline(
            "text-generation",
            model=self.policy.model,
            tokenizer=self.policy.tokenizer,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_k=0,  # transformers defaults to top_k=50 when sampling; the engine does not filter
            top_p=1.0,
            return_full_text=False,
        )
        self.chat = ChatHuggingFace(llm=HuggingFacePipeline(pipeline=pipe), tokenizer=self.policy.tokenizer)

        self.meter = ForwardMeter()
        self.policy.model.register_forward_hook(self.meter.hook, with_kwargs=True)
        self.ways: dict[str, Callable[[int], Outcome]] = {
            "engine": self.engine,
            "hf_generate": self.hf_generate,
            "sequential_chat": self.sequential_chat,
        }

    def engine(self, seed: int) -> Outcome:
        from align_chains import BestOfN, SamplingParams

        torch.manual_seed(seed)
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=seed)
        result = BestOfN(n=N).run(self.messages, self.policy, self.reward, params)
        return Outcome(
            # candidates' token_ids drop the EOS; count it back ("stop" is only EOS here: no stop strings)
            tokens_per_candidate=[c.num_tokens + (c.finish_reason == "stop") for c in result.candidates],
            best_reward=float(result.reward or 0.0),
            best_text=result.text,
            candidates=[c.text for c in result.candidates],
            engine_counters=result.counters.as_dict(),
        )

    def hf_generate(self, seed: int) -> Outcome:
        torch.manual_seed(seed)
        output = self.policy.model.generate(
            self.prompt_ids,
            attention_mask=torch.ones_like(self.prompt_ids),
            do_sample=True,
            temperature=self.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=N,
        )
        new_tokens = output[:, self.prompt_ids.shape[1] :].tolist()
        tokens, texts = [], []
        for ids in new_tokens:
            end = next((i + 1 for i, t in enumerate(ids) if t in self.eos), len(ids))  # EOS included
            tokens.append(end)
            texts.append(self.policy.decode([t for t in ids[:end] if t not in self.eos]))
        scores = self.reward.score([self.messages] * N, texts)
        best = pick_best(scores)
        return Outcome(tokens, scores[best], texts[best], texts)

    def sequential_chat(self, seed: int) -> Outcome:
        torch.manual_seed(seed)
        texts, tokens = [], []
        for _ in range(N):
            before = self.meter.forward_passes
            texts.append(str(self.chat.invoke(self.messages).content))
            # one row per call: every forward pass of generate() samples exactly one token
            tokens.append(self.meter.forward_passes - before)
        scores = self.reward.score([self.messages] * N, texts)
        best = pick_best(scores)
        return Outcome(tokens, scores[best], texts[best], texts)

    def run(self, way: str, repeat: int, seed: int) -> Run:
        forwards0, prefill0 = self.meter.forward_passes, self.meter.prefill_tokens
        start = time.perf_counter()
        outcome = self.ways[way](seed)
        seconds = time.perf_counter() - start
        forwards1, prefill1 = self.meter.forward_passes, self.meter.prefill_tokens
        return Run(
            way=way,
            repeat=repeat,
            seconds=seconds,
            tokens_per_candidate=outcome.tokens_per_candidate,
            forward_passes=forwards1 - forwards0,
            prefill_tokens=prefill1 - prefill0,
            best_reward=outcome.best_reward,
            best_text=outcome.best_text,
            candidates=outcome.candidates,
            engine_counters=outcome.engine_counters,
        )


def summarize(runs: list[Run]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for way in WAYS:
        timed = [r for r in runs if r.way == way and r.repeat >= 0]
        summary[way] = {
            **spread(r.seconds for r in timed),
            "mean_tokens_per_candidate": statistics.fmean(r.mean_tokens for r in timed),
            "forward_passes_per_run": statistics.fmean(r.forward_passes for r in timed),
            "prefill_tokens_per_run": statistics.fmean(r.prefill_tokens for r in timed),
        }
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=512, help="target rendered prompt length")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    add_common_options(
        parser,
        repeats=5,
        repeats_help="timed rounds of the three ways",
        seed_help="round r samples with seed + r, all ways alike",
        json_help="write raw results here",
    )
    return parser


def environment(bench: Bench) -> dict[str, Any]:
    import langchain_huggingface
    import transformers

    return machine(
        transformers=transformers.__version__,
        langchain_huggingface=getattr(langchain_huggingface, "__version__", "unknown"),
        device=str(bench.policy.device),
        dtype=str(bench.policy.model.dtype),
    )


def print_report(bench: Bench, args: argparse.Namespace, runs: list[Run], summary: dict[str, Any]) -> None:
    engine_median = summary["engine"]["median_s"]
    print(
        f"\nBest-of-{N}, {bench.prompt_tokens}-token prompt, {args.max_new_tokens} new tokens, "
        f"{args.repeats} interleaved repeats (seconds per Best-of-{N} request):"
    )
    header = (
        f"{'way':<16} {'median s':>9} {'min s':>8} {'max s':>8} {'vs engine':>10} "
        f"{'tok/cand':>9} {'forwards':>9} {'prefilled':>10}"
    )
    print(header)
    print("-" * len(header))
    for way in WAYS:
        s = summary[way]
        print(
            f"{way:<16} {s['median_s']:>9.2f} {s['min_s']:>8.2f} {s['max_s']:>8.2f} "
            f"{s['median_s'] / engine_median:>9.2f}x {s['mean_tokens_per_candidate']:>9.1f} "
            f"{s['forward_passes_per_run']:>9.1f} {s['prefill_tokens_per_run']:>10.0f}"
        )
    print(
        "(tok/cand: mean sampled tokens per candidate, EOS included; forwards and prefilled: policy "
        "forward passes and prompt tokens prefilled per request, from a forward hook)"
    )
    print()
    for way, target in (("hf_generate", 2), ("sequential_chat", 5)):
        print(ratio_line(way, "engine", ratio(summary[way]["median_s"], engine_median), target))
    counters = [r.engine_counters for r in runs if r.way == "engine" and r.repeat >= 0]
    keys = ("prompt_tokens", "generated_tokens", "forward_passes", "reward_calls", "seconds")
    engine = medians(counters, keys)
    print("engine counters per request (median): " + ", ".join(f"{k}={v:g}" for k, v in engine.items()))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print("Loading the embedded policy and reward (not timed) ...", flush=True)
    bench = Bench(args.prompt_tokens, args.max_new_tokens, args.temperature)
    env = environment(bench)
    print(
        f"policy {bench.policy.name} ({env['device']}, {env['dtype']}), reward {bench.reward.name}\n"
        f"{machine_line(env)}, transformers {env['transformers']}, "
        f"langchain-huggingface {env['langchain_huggingface']}\n"
        f"prompt: {bench.prompt_tokens} tokens after the chat template; N={N}, "
        f"max_new_tokens={args.max_new_tokens}, temperature={args.temperature}, repeats={args.repeats}"
    )
    runs: list[Run] = []
    for repeat, way in interleaved(args.repeats, WAYS):
        if way == WAYS[0]:
            print("Warm-up (not counted):" if repeat < 0 else f"Round {repeat + 1}/{args.repeats}:")
        with status(way):
            runs.append(bench.run(way, repeat, args.seed + repeat))
    summary = summarize(runs)
    print_report(bench, args, runs, summary)
    ratios = {
        f"{way}/engine": ratio(summary[way]["median_s"], summary["engine"]["median_s"]) for way in WAYS[1:]
    }
    config = {
        "n": N,
        "prompt_tokens": bench.prompt_tokens,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": 0,
        "top_p": 1.0,
        "repeats": args.repeats,
        "seed": args.seed,
        "messages": bench.messages,
    }
    runs_out = [asdict(r) | {"mean_tokens": r.mean_tokens} for r in runs]
    write_json(
        args.json, {"config": config, "machine": env, "summary": summary, "ratios": ratios, "runs": runs_out}
    )


if __name__ == "__main__":
    main()
