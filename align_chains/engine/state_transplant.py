"""DARWIN's replacement on a live batch: a row takes another row's partial answer, keeps its prompt.

In the authors' code (and ALGORITHMS.md) a candidate outside the top k takes the *state* (the
partial answer) of a random top-k candidate but goes on decoding under *its own* mutated
instruction. Copying the source's cache row (``Batch.select``) would also copy the source's
prompt, so here row ``t`` keeps its own prompt cache (the first ``prompt_width`` columns, left
padded exactly as before) and only the copied answer tokens are prefilled on top of it: one
batched forward over every replaced row, with the row's own attention mask and position ids,
so the prompt is never encoded again. Rows whose source has already finished become finished
copies (nothing more is decoded on them), so they need no forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from align_chains.engine.decoder import Batch, Decoder
from align_chains.engine.forward import run
from align_chains.engine.kv_cache import PreallocatedLayer
from align_chains.errors import InvalidInputError

_FULL_LAYERS = (DynamicLayer, PreallocatedLayer)


def supports_transplant(cache: Any) -> bool:
    """Whether every layer keeps every position's keys (no sliding window, no quantization)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in _FULL_LAYERS for layer in layers)


@torch.inference_mode()
def transplant_states(
    decoder: Decoder, batch: Batch, rows: Sequence[int], sources: Sequence[int]
) -> list[int]:
    """Row ``rows[j]`` continues ``sources[j]``'s partial answer under its OWN prompt, in place.

    Tokens, log-probabilities, finished/stopped flags and the pending token are copied from the
    source; the prompt (index, length, logits, cache columns) stays the row's own. Returns the
    answer tokens prefilled per row (0 where the source had finished); ``decoder.counters``
    counts them as prompt tokens, with one forward pass for all.
    """
    rows, sources = list(rows), list(sources)
    if len(rows) != len(sources):
        raise InvalidInputError("transplant_states() needs one source per row.")
    if not rows:
        return []
    if not supports_transplant(batch.cache):
        raise InvalidInputError(
            "DARWIN's replacement keeps each row's own prompt cache, which needs a full-attention KV "
            f"cache; this model's cache has {sorted({type(x).__name__ for x in batch.cache.layers})} layers "
            "(sliding window or quantized). Use a model with a plain KV cache."
        )
    device = batch.tokens.device
    target = torch.tensor(rows, dtype=torch.long, device=device)
    source = torch.tensor(sources, dtype=torch.long, device=device)
    width = batch.prompt_width
    fed = batch.cache.get_seq_length() - width  # answer tokens already in the cache (all rows alike)
    live = ~batch.finished[source]  # finished sources: the row becomes a finished copy, no forward

    # bookkeeping of the answer: the source's; of the prompt: the row's own
    shift = batch.positions[source] - batch.prompt_lengths[source]
    batch.positions[target] = batch.prompt_lengths[target] + shift
    batch.attention_mask[target, width:] = batch.attention_mask[source, width:]
    for name in ("tokens", "logprobs", "num_tokens", "finished", "stopped", "pending"):
        value = getattr(batch, name)
        if value is not None:
            value[target] = value[source]

    prefilled = [0] * len(rows)
    if bool((~live).any()):  # a finished row's cache is never read again; copy it whole
        _copy_cache_rows(batch.cache, target[~live], source[~live])
    if bool(live.any()):
        t, s = target[live], source[live]
        if fed > 0:
            logits = _prefill_answers(decoder, batch, t, s, fed)
            prefilled = [fed if alive else 0 for alive in live.tolist()]
            if batch.next_logits is not None:
                batch.next_logits[t] = logits
        elif batch.next_logits is not None:
            batch.next_logits[t] = batch.prompt_logits[t]
    return prefilled


def _prefill_answers(
    decoder: Decoder, batch: Batch, t: torch.Tensor, s: torch.Tensor, fed: int
) -> torch.Tensor:
    """Rows ``t``'s prompt cache plus ``s``'s first ``fed`` answer tokens, written into ``t``'s
    cache rows (inside ``transplant_states``'s inference mode). Returns the last position's
    logits (the next-token logits when no token is pending)."""
    width = batch.prompt_width
    own = DynamicCache(
        [(layer.keys[t, :, :width], layer.values[t, :, :width]) for layer in batch.cache.layers]
    )
    out = run(
        decoder.policy.model,
        batch.tokens[s, :fed],
        cache=own,
        past_mask=batch.attention_mask[t, :width],
        logits_to_keep=1,
    )
    decoder.counters.forward_passes += 1
    decoder.counters.prompt_tokens += int(t.numel()) * fed
    for layer, filled in zip(batch.cache.layers, out.cache.layers, strict=True):
        layer.keys[t] = filled.keys
        layer.values[t] = filled.values
    return out.logits[:, -1, :].float()


def _copy_cache_rows(cache: Any, target: torch.Tensor, source: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.keys[target] = layer.keys[source]
        layer.values[target] = layer.values[source]
