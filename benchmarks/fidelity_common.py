"""Shared pieces of the fidelity benchmarks (tune_fidelity.py, compare_fidelity.py).

- the prompt sets, written before any run: ``fidelity_dev_prompts.txt`` (12 prompts, used only
  to choose IVG's principle scale and SEA's guard settings) and ``fidelity_eval_prompts.txt``
  (14 prompts, used only for the reported comparison);
- fluency measures of an answer that no strategy optimises: the policy's perplexity of the
  answer under the plain prompt, and the repetition rate (share of token 3-grams repeating an
  earlier one);
- a summary row: medians and means over prompts.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from align_chains.models.chat import as_conversation
from align_chains.models.policy import Policy
from align_chains.strategies.fluency_guard import repetition_rate

DATA = Path(__file__).parent / "data"
DEV_PROMPTS = DATA / "fidelity_dev_prompts.txt"
EVAL_PROMPTS = DATA / "fidelity_eval_prompts.txt"

# The principles. IVG guides by IVG_PRINCIPLE; SEA optimises the judge's default principle.
IVG_PRINCIPLE = "Answer concisely and politely."
HELD_OUT_PRINCIPLE = "The response is clear, fluent and directly answers the question."


def read_prompts(path: Path, limit: int | None = None) -> list[str]:
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts[:limit] if limit else prompts


def answer_nll(policy: Policy, prompts: Sequence[str], answers: Sequence[str]) -> list[float | None]:
    """Mean NLL per token (nats) of each answer under the policy reading the plain prompt.

    One left-padded forward over prompt + answer per batch of 8; None for an empty answer.
    """
    out: list[float | None] = []
    for start in range(0, len(prompts), 8):
        chunk_p, chunk_a = prompts[start : start + 8], answers[start : start + 8]
        heads = [policy.render(as_conversation(p)) for p in chunk_p]
        tails = [policy.tokenizer(a, add_special_tokens=False)["input_ids"] for a in chunk_a]
        seqs = [[*h, *t] for h, t in zip(heads, tails, strict=True)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), policy.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):  # builds the batch
            ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, width - len(s) :] = 1
        ids, mask = ids.to(policy.device), mask.to(policy.device)
        with torch.inference_mode():
            logits = policy.model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
            ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()
        for r, t in enumerate(tails):
            out.append(None if not t else float(-logp[r, width - 1 - len(t) :].mean()))
    return out


def fluency(policy: Policy, prompts: Sequence[str], answers: Sequence[str]) -> dict[str, list[Any]]:
    """Per-answer perplexity under the plain prompt, repetition rate (3-grams) and length in tokens."""
    nll = answer_nll(policy, prompts, answers)
    ids = [policy.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    return {
        "perplexity": [None if v is None else math.exp(v) for v in nll],
        "repetition": [repetition_rate(i, 3) for i in ids],
        "tokens": [len(i) for i in ids],
    }


def summary(values: Sequence[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "median": None}
    return {"mean": statistics.fmean(vals), "median": statistics.median(vals)}
