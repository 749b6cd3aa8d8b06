"""SEA's passes of the policy over the prompts' KV cache: logits along given tokens, the
top-k restricted decode, and the plain-prompt log-probabilities the fluency guard reads.

The prompts are prefilled once (for the initial samples) and every pass here runs on top of
that cache through the engine's ``forward.run``, then cuts the cache back to the prompts, so
an iteration never encodes a prompt again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from align_chains.cancellation import check_cancelled
from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Batch
from align_chains.engine.forward import run
from align_chains.models.policy import Policy


def crop(batch: Batch, response_tokens: int) -> None:
    """Cut the cache back to the prompts plus ``response_tokens`` tokens."""
    extra = batch.cache.get_seq_length() - batch.prompt_width - response_tokens
    if extra > 0:
        batch.cache.crop(-extra)


class PolicyPasses:
    """The policy's passes of one SEA run (counted in ``counters.forward_passes``; the decode's
    extra passes in ``decode_passes``, the guard's in ``guard_passes``)."""

    def __init__(self, policy: Policy, counters: ComputeCounters, decode_top_k: int, length: int) -> None:
        self.policy, self.counters = policy, counters
        self.decode_top_k, self.length = decode_top_k, length
        self.decode_passes = 0
        self.guard_passes = 0

    def logits(self, batch: Batch, tokens: torch.Tensor, keep_cache: bool = False) -> torch.Tensor:
        """Logits ``[rows, L, V]`` predicting each of ``tokens`` after the prompt (one pass, no grad).

        The cache is cut back to the prompts afterwards unless ``keep_cache`` (then the caller
        does it with ``crop``).
        """
        first = batch.prompt_logits[:, None, :]
        if tokens.shape[1] == 1:
            return first.clone()
        model, past = self.policy.model, batch.attention_mask
        out = run(model, tokens[:, :-1], cache=batch.cache, past_mask=past, mode="no_grad")
        if not keep_cache:
            crop(batch, 0)
        self.counters.forward_passes += 1
        # fp32 whatever the model's dtype (the NLL meets the fp32 variable); written in place,
        # so a bf16 model's logits are converted once, without an intermediate fp32 copy
        logits = torch.empty((*tokens.shape, first.shape[-1]), dtype=torch.float32, device=first.device)
        logits[:, :1] = first
        logits[:, 1:] = out.logits
        return logits

    def restricted_decode(
        self, batch: Batch, logits_var: torch.Tensor, hard: torch.Tensor, step_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmax of the logits among the policy's top-k at each position, decoding left to right.

        The top-k sets depend on the decoded prefix. This step's policy forward on ``hard``
        (whose KV cache is still in ``batch``) gives the right top-k up to the first position
        where the decode leaves ``hard``; from the earliest such position over the rows, the
        decode continues one token per pass on that cache. When the decode agrees with ``hard``
        (common once the logits settle) it costs no extra pass; at worst it costs the L
        single-token passes of an ordinary decode.
        """
        k = min(self.decode_top_k, logits_var.shape[-1])

        def pick(position_logits: torch.Tensor, position_var: torch.Tensor) -> torch.Tensor:
            top = position_logits.topk(k, dim=-1).indices
            return top.gather(-1, position_var.gather(-1, top).argmax(-1, keepdim=True)).squeeze(-1)

        decoded = pick(step_logits, logits_var)
        logits = step_logits
        differs = (decoded != hard).any(0).nonzero()
        if differs.numel():
            first = int(differs[0])  # every row's decode equals ``hard`` before this position
            logits = step_logits.clone()
            crop(batch, first)
            mask = batch.attention_mask
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], first))], dim=1)
            for t in range(first, self.length - 1):
                check_cancelled()  # one policy forward per position: each is a step
                step = decoded[:, t : t + 1]
                out = run(self.policy.model, step, cache=batch.cache, past_mask=mask, mode="no_grad")
                mask = out.mask
                self.counters.forward_passes += 1
                self.decode_passes += 1
                logits[:, t + 1] = out.logits[:, -1].float()
                decoded[:, t + 1] = pick(logits[:, t + 1], logits_var[:, t + 1])
        crop(batch, 0)
        return decoded, logits

    def plain_prompt_logprobs(self, batch: Batch, answers: Sequence[list[int]]) -> list[list[float]]:
        """log pi(token | plain prompt, answer so far) along each row's answer: one policy pass on
        the prompts' cache (counted in ``forward_passes`` and in ``guard_passes``)."""
        width = max((len(a) for a in answers), default=0)
        if width == 0:
            return [[] for _ in answers]
        device = self.policy.device
        padded = torch.full((len(answers), width), self.policy.pad_token_id, dtype=torch.long, device=device)
        for r, answer in enumerate(answers):  # builds one tensor
            if answer:
                padded[r, : len(answer)] = torch.tensor(answer, device=device)
        logits = self.logits(batch, padded)
        self.guard_passes += 1 if width > 1 else 0
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, padded[..., None]).squeeze(-1).tolist()
        return [row[: len(a)] for row, a in zip(logprobs, answers, strict=True)]
