"""The fluency gate of ``align-chains eval``: a met constraint counts as a success only in fluent text.

Fixed before any results were read (issue 24), and deliberately cheap to state, hard to game:

- **per-token NLL under the policy** (the plain prompt), at most ``NLL_MARGIN`` nats above the
  NLL of the policy's own plain sample for the same prompt, or ``NLL_FLOOR`` when that is
  higher: word salad that ticks a box reads as noise to the very model that wrote the plain
  answer. (The floor was added on the dev split, before any test result: one plain sample is a
  noisy reference, and a sample at 1.23 nats made a plainly fluent 2.31-nat answer fail.);
- **repetition**: at most ``MAX_REPETITION`` of the answer's token trigrams repeat an earlier one
  (rep-3, as the SEA guard measures it), so a loop of the required words fails;
- **not empty**: at least one word.

Answers are re-tokenised as text and scored in one batched forward per evaluation batch (the
plain sample's too), so every strategy is judged the same way, whatever it kept of its tokens.
The gate's work is the harness's, not the strategy's: it is not counted in a cell's compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from align_chains.models.chat import Conversation
from align_chains.models.policy import Policy
from align_chains.strategies.fluency_guard import mean_nll, repetition_rate

NLL_MARGIN = 1.0
"""Nats per token an answer may exceed the plain sample's NLL (a perplexity e times higher)."""
NLL_FLOOR = 3.0
"""The NLL threshold is never below this (a perplexity of 20: normal samples of the 135M policy
run near 2 nats, the broken texts the gate is for well above 4)."""
MAX_REPETITION = 0.25
"""Largest share of token trigrams that repeat an earlier trigram."""
NGRAM = 3
GATE = {"nll_margin": NLL_MARGIN, "nll_floor": NLL_FLOOR, "max_repetition": MAX_REPETITION, "ngram": NGRAM}


def answer_logprobs(policy: Policy, conversations: Sequence[Conversation], texts: Sequence[str]) -> list:
    """``(token ids, log pi(token | prompt, answer so far))`` of each answer, in one forward."""
    prompts = [policy.render(c) for c in conversations]
    answers = [policy.tokenizer(t, add_special_tokens=False)["input_ids"] if t else [] for t in texts]
    rows = [p + a for p, a in zip(prompts, answers, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), policy.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):  # builds one right-padded tensor
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.inference_mode():
        logits = policy.model(input_ids=ids.to(policy.device), attention_mask=mask.to(policy.device)).logits
    targets = ids[:, 1:, None].to(logits.device)
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets).squeeze(-1).cpu()
    out = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        start = len(prompt) - 1  # the logit at position t predicts token t + 1
        out.append((answer, logprobs[i, start : start + len(answer)].tolist()))
    return out


def measure(policy: Policy, conversations: Sequence[Conversation], texts: Sequence[str]) -> list[dict]:
    """Each answer's NLL per token and rep-3 (what the gate reads)."""
    return [
        {"nll": mean_nll(lps), "repetition": repetition_rate(ids, NGRAM), "tokens": len(ids)}
        for ids, lps in answer_logprobs(policy, conversations, texts)
    ]


def nll_threshold(reference_nll: float | None) -> float:
    """The most NLL per token an answer may have: its plain sample's + the margin, at least the floor."""
    return max(NLL_FLOOR, (reference_nll or 0.0) + NLL_MARGIN)


def verdict(measured: dict[str, Any], reference_nll: float | None) -> dict[str, Any]:
    """The gate on one answer: ``fluent`` and, when it fails, ``reason`` (empty, nll, repetition)."""
    reason = None
    if not measured["tokens"] or measured["nll"] is None:
        reason = "empty"
    elif measured["nll"] > nll_threshold(reference_nll):
        reason = "nll"
    elif measured["repetition"] > MAX_REPETITION:
        reason = "repetition"
    return {**measured, "reference_nll": reference_nll, "fluent": reason is None, "reason": reason}
