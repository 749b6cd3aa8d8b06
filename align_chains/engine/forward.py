"""The one way to run a model over tokens, fresh or on top of a KV cache.

Every pass the package makes over a cache goes through here: the decoder's prefill and decode
steps, DARWIN's shared-prefix prefill and state transplant, SEA's policy passes, the reward
scorers that keep their own caches (ARGS, early rejection, SEA's soft scoring). Each caller
says *what* to run (tokens or input embeddings, which cache, which of the new tokens are
real); this module writes the attention mask (the cache's columns, then the new tokens'),
the position ids (real tokens counted from each row's first, so left padding is invisible)
and the ``logits_to_keep`` argument (only for models whose forward accepts it).

Each pass starts with ``turns.pass_turn()``: a run taking turns on the policy (the scheduler's
running groups) hands the policy's lock to another running group here, between passes, and gets
it back one of their passes later (``align_chains/turns.py``).

Rows of unequal length are left-padded (``left_pad``): real tokens are right-aligned, so
every row's next token lands in the same column.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache as memoize
from typing import Any, Literal

import torch

from align_chains.turns import pass_turn

#: "inference": no autograd at all (the default); "no_grad": outputs usable next to tensors that
#: need gradients (SEA's policy passes); "grad": gradients flow (SEA's soft scoring)
GradMode = Literal["inference", "no_grad", "grad"]


@dataclass
class Pass:
    """What one forward returns: the cache now holding the new tokens, the attention mask that
    matches it (cache columns, then the new tokens), and the logits (a causal LM) or last hidden
    states (a base model), whichever the model gives."""

    cache: Any
    mask: torch.Tensor
    logits: torch.Tensor | None
    hidden: torch.Tensor | None


@memoize
def _accepts_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether ``model.forward`` can skip the vocabulary projection of positions nobody reads."""
    return _accepts_logits_to_keep(type(model))


def left_pad(
    sequences: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of unequal length as one ``[rows, width]`` tensor, right-aligned, and its
    mask (1 on real tokens)."""
    if not sequences:
        raise ValueError("left_pad() needs at least one sequence")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for r, seq in enumerate(sequences):  # builds the padded tensor, not a decode step
        ids[r, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long, device=device)
        mask[r, width - len(seq) :] = 1
    return ids, mask


def _grad_context(mode: GradMode) -> Any:
    if mode == "inference":
        return torch.inference_mode()
    if mode == "no_grad":
        return torch.no_grad()
    return nullcontext()


def run(
    model: Any,
    tokens: torch.Tensor | None = None,
    *,
    embeds: torch.Tensor | None = None,
    cache: Any = None,
    past_mask: torch.Tensor | None = None,
    new_mask: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    logits_to_keep: int | None = None,
    mode: GradMode = "inference",
) -> Pass:
    """Run ``model`` over ``tokens`` ``[rows, n]`` (or input ``embeds`` ``[rows, n, d]``) after ``cache``.

    Args:
        model: A causal LM (returns logits) or a base model (returns hidden states).
        tokens: The new token ids; give these or ``embeds``.
        embeds: The new tokens as input embeddings (a relaxed response, say).
        cache: The KV cache the new tokens follow (None: a fresh pass); the model writes the
            new tokens into it.
        past_mask: ``[rows, cached]``, 1 on the cache's real columns (None: all real).
        new_mask: ``[rows, n]``, 1 on the real new tokens (None: all real).
        positions: ``[rows, n]`` position ids (None: each row's real tokens counted, padding
            taking its neighbour's position; give them where the caller tracks them already).
        logits_to_keep: Project only the last this many positions to the vocabulary (ignored
            by models that cannot).
        mode: The autograd mode of the pass (see ``GradMode``).
    """
    pass_turn()  # a forward-pass boundary: another running request may take its turn here
    new = tokens if tokens is not None else embeds
    if new is None or (tokens is not None and embeds is not None):
        raise ValueError("run() takes exactly one of tokens and embeds")
    rows, count = new.shape[0], new.shape[1]
    device = new.device if past_mask is None else past_mask.device
    if new_mask is None:
        new_mask = torch.ones((rows, count), dtype=torch.long, device=device)
    if past_mask is None:
        cached = 0 if cache is None else cache.get_seq_length()
        past_mask = torch.ones((rows, cached), dtype=new_mask.dtype, device=device)
    mask = torch.cat([past_mask, new_mask.to(past_mask.dtype)], dim=1)
    if positions is None:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past_mask.shape[1] :]
    extra = {"logits_to_keep": logits_to_keep} if logits_to_keep and accepts_logits_to_keep(model) else {}
    inputs = {"input_ids": tokens} if tokens is not None else {"inputs_embeds": embeds}
    with _grad_context(mode):
        out = model(
            **inputs,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            **extra,
        )
    return Pass(out.cache, mask, getattr(out, "logits", None), getattr(out, "last_hidden_state", None))


def prefill_left_padded(
    model: Any,
    sequences: Sequence[Sequence[int]],
    pad_token_id: int,
    device: torch.device | str,
    *,
    logits_to_keep: int | None = None,
    mode: GradMode = "inference",
) -> Pass:
    """One batched pass over token sequences of unequal length, left-padded (``left_pad``).

    ``model`` is often a base model (no vocabulary projection over a prefix). The returned
    ``mask`` is 1 on real tokens, one row per sequence.
    """
    ids, mask = left_pad(sequences, pad_token_id, device)
    return run(model, ids, new_mask=mask, logits_to_keep=logits_to_keep, mode=mode)


def run_branches(model: Any, candidates: torch.Tensor, cache: Any, past_mask: torch.Tensor) -> torch.Tensor:
    """Each row's ``k`` candidate tokens ``[rows, k]`` as ONE pass of k tokens over ``cache``.

    Candidate j of a row attends to the row's real cached tokens and to itself only (a tree
    mask), and all k sit at the row's next position, so the k branches cost one token each.
    Returns the base model's last hidden states ``[rows, k, d]``; the cache gains k columns
    (``kv_cache.keep_branch`` keeps the chosen one).
    """
    rows, k = candidates.shape
    device = past_mask.device
    dtype = model.dtype
    filled = past_mask.shape[1]
    prefix = (past_mask[:, None, None, :] == 0).expand(rows, 1, k, filled)
    own = ~torch.eye(k, dtype=torch.bool, device=device)[None, None].expand(rows, 1, k, k)
    tree = torch.zeros((rows, 1, k, filled + k), dtype=dtype, device=device)
    tree.masked_fill_(torch.cat([prefix, own], dim=-1), torch.finfo(dtype).min)
    with torch.inference_mode():
        out = model(
            input_ids=candidates.to(device),
            attention_mask=tree,
            position_ids=past_mask.sum(-1)[:, None].expand(rows, k),
            cache=cache,
            use_cache=True,
        )
    return out.last_hidden_state
