"""Tiny random models for tests of packages built on align_chains (the integrations).

The same recipe as the core suite's fixtures: SmolLM2's real tokenizer (from the embedded
package or its converted cache, nothing downloaded) and a 2-layer random Llama built from a
config. Fast enough for unit tests, useless for quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from align_chains.models.embedded import gguf_path
from align_chains.models.policy import Policy
from align_chains.settings import cache_dir


@lru_cache(maxsize=1)
def smol_tokenizer() -> Any:
    """SmolLM2's tokenizer and chat template."""
    from transformers import AutoTokenizer

    models = cache_dir() / "models"
    converted = (
        next(models.glob("smollm2-135m-instruct-v*/tokenizer.json"), None) if models.is_dir() else None
    )
    if converted is not None:
        return AutoTokenizer.from_pretrained(str(converted.parent))
    gguf = gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def tiny_llama_config(tokenizer: Any, **overrides: Any) -> Any:
    """A 2-layer, 32-wide Llama config on ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig

    values: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_policy(seed: int = 0, name: str = "tiny-llama") -> Policy:
    """A random tiny Llama policy with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = smol_tokenizer()
    torch.manual_seed(seed)
    return Policy(model=LlamaForCausalLM(tiny_llama_config(tokenizer)), tokenizer=tokenizer, name=name)


def with_chat_template(
    policy: Policy, chat_template: str, special_tokens: Sequence[str] = (), text_tokens: Sequence[str] = ()
) -> Policy:
    """``policy`` with another family's chat template and that family's added tokens (control tokens
    in ``special_tokens``, plain added tokens in ``text_tokens``), on a copy of its model with rows
    for them: the tiny model stands in for a Llama, Mistral or Qwen checkpoint in tests."""
    import copy

    from tokenizers import AddedToken

    tokenizer = copy.deepcopy(policy.tokenizer)
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in special_tokens], special_tokens=True
    )
    tokenizer.add_tokens([AddedToken(t, special=False) for t in text_tokens])
    import torch

    model = copy.deepcopy(policy.model)
    torch.manual_seed(0)  # the new rows are drawn at random: the same ones every time
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return Policy(
        model=model, tokenizer=tokenizer, name=f"{policy.name}+template", chat_template=chat_template
    )


def taught_policy(
    lessons: list[tuple[list[int], str]],
    *,
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    name: str = "taught-tiny-llama",
) -> Policy:
    """A tiny Llama trained, here and now, to answer each rendered prompt with its response.

    ``lessons`` are ``(prompt_token_ids, response_text)`` pairs; the loss covers the response
    and its end-of-turn token only. Greedy decoding then reproduces the responses: a policy
    whose choices are its own weights', made deterministic for tests of tool calls and agents.
    """
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = smol_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, hidden_size=64, intermediate_size=128))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sequences, targets = [], []
    for prompt_ids, response in lessons:
        answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [end]
        sequences.append(prompt_ids + answer)
        targets.append([-100] * len(prompt_ids) + answer)  # loss on the response only
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):  # one padded batch of every lesson per step
        optimiser.zero_grad()
        hidden = model.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).last_hidden_state
        scored = labels[:, 1:] != -100  # the vocabulary projection runs on response positions only
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[scored]), labels[:, 1:][scored])
        loss.backward()
        optimiser.step()
    model.eval()
    model.generation_config.eos_token_id = end
    return Policy(model=model, tokenizer=tokenizer, name=name)


_WORDS = [
    "the",
    "a",
    "answer",
    "sleep",
    "light",
    "water",
    "because",
    "step",
    "first",
    "then",
    "calm",
    "bright",
    "quick",
    "plan",
    "note",
]


def _synthetic_cell(
    rng: Any, key: str, s: int, prompt_id: str, candidates: int, words: int
) -> dict[str, Any]:
    """One cell of ``synthetic_eval_results``: setting ``s`` (Best-of-2^s) on one prompt."""
    texts = [" ".join(rng.choices(_WORDS, k=words)) for _ in range(candidates)]
    rewards = [rng.gauss(0.1 * s, 1.0) for _ in range(candidates)]
    best = max(range(candidates), key=lambda i: rewards[i])
    per_prompt = {
        "generated_tokens": 40.0 * 2**s,
        "reward_items": 2.0**s,
        "forward_passes": 10.0,
        "reward_calls": 0.25,
        "seconds": 0.1 * 2**s,
    }
    kept = [
        {"index": i, "text": t, "reward": r, "tokens": 40, "finish_reason": "length", "chosen": i == best}
        for i, (t, r) in enumerate(zip(texts, rewards, strict=True))
    ]
    return {
        "key": key,
        "strategy": key.partition(":")[0],
        "settings": {"n": 2**s} if s else {},
        "prompt": prompt_id,
        "text": texts[best],
        "reward": rewards[best],
        "holdout": rng.random(),
        "strategy_reward": rewards[best],
        "compute": {**per_prompt, "prompt_tokens": 20, "batch_size": 1},
        "per_prompt": per_prompt,
        "chosen_index": best,
        "finish_reason": "length",
        "candidates": kept,
        "candidates_total": candidates,
        "candidate_rewards": rewards,
        "details": {"samples": candidates},
        "flags": {},
        "trace": [{"candidate": i, "reward": r} for i, r in enumerate(rewards)],
        "trace_total": candidates,
    }


def synthetic_eval_results(
    num_prompts: int, num_settings: int, *, candidates: int = 4, answer_words: int = 30, seed: int = 0
) -> dict[str, Any]:
    """An ``align-chains eval`` results file of the given size, with random rewards and answers.

    For sizing the report (its tests and ``benchmarks/bench_report.py``): every cell has a
    chosen answer, ``candidates`` candidates and a short trace, in the format ``evaluate``
    writes; nothing in it comes from a model.
    """
    import random

    rng, texts = random.Random(seed), random.Random(0)  # the same prompts whatever the seed
    keys = ["plain"] + [f"best-of-n:n={2**k}" for k in range(1, num_settings)]
    prompts = [
        {"id": f"q{i:04d}", "messages": [{"role": "user", "content": " ".join(texts.choices(_WORDS, k=12))}]}
        for i in range(num_prompts)
    ]
    cells, summary = [], []
    for s, key in enumerate(keys):
        own = [_synthetic_cell(rng, key, s, p["id"], candidates, answer_words) for p in prompts]
        cells += own
        mean = sum(c["reward"] for c in own) / len(own)
        stat = {"mean": mean, "ci": [mean - 0.1, mean + 0.1]}
        summary.append(
            {
                "key": key,
                "strategy": own[0]["strategy"],
                "settings": own[0]["settings"],
                "prompts": len(own),
                "reward": stat,
                "holdout": stat,
                "win_rate": {"mean": 0.5, "ci": [0.4, 0.6]},
                "holdout_win_rate": {"mean": 0.5, "ci": [0.4, 0.6]},
                "compute": dict(own[0]["per_prompt"]),
            }
        )
    config = {
        "policy": "synthetic",
        "reward": "random",
        "holdout": "random",
        "max_tokens": 48,
        "temperature": None,
        "seed": seed,
        "batch_size": 1,
        "strategies": keys,
    }
    return {
        "version": 1,
        "config": config,
        "prompts": prompts,
        "summary": summary,
        "errors": [],
        "cells": cells,
    }
