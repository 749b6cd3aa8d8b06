"""Finished-row compaction: once enough rows of a batch have ended, decode only the others.

Without it, a row that hit EOS is fed padding until the whole batch ends; with sampled lengths
that is often a large share of the forward passes. ``Decoder.extend`` hands the live rows to a
smaller batch (their KV-cache rows copied out, grammar matchers shared) and, when it is done,
merges them back: the caller sees the same rows, tokens, log-probabilities and flags as without
compaction.

Results stay identical because nothing depends on a row's batch position: sampling draws one
uniform per row of the *original* batch at every step and hands each live row its own, and on
CPU a forward pass computes a row bit for bit the same in any batch of at least 4 rows
(``CompactionPolicy.min_rows``: oneDNN/MKL take another kernel below 4), as long as a batch with
left padding keeps some (``rows_to_keep``); both are checked by ``tests/test_compaction.py``.
On GPUs kernels are picked by shape and a batch row costs little in a memory-bound step, so
compaction is for CPU policies.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from align_chains.engine.kv_cache import PreallocatedLayer

if TYPE_CHECKING:
    from align_chains.engine.decoder import Batch


@dataclasses.dataclass
class CompactionPolicy:
    """When ``Decoder.extend`` compacts a batch (thresholds measured by benchmarks/bench_decode_waste.py).

    Args:
        enabled: Off turns compaction off everywhere (equivalence tests compare both).
        min_finished: Share of the batch's rows that must have ended (0.25: two rows of eight).
        min_rows: Never compact below this many live rows (CPU kernels change below 4).
        min_steps_left: Steps the live rows may still run; fewer cannot repay the cache copy.
        devices: Device types compaction runs on.
    """

    enabled: bool = True
    min_finished: float = 0.25
    min_rows: int = 4
    min_steps_left: int = 4
    devices: tuple[str, ...] = ("cpu",)


#: the process-wide setting ``Decoder`` reads (tests and benchmarks switch it)
COMPACTION = CompactionPolicy()


def worth_compacting(batch: Batch, steps_left: int, policy: CompactionPolicy | None = None) -> bool:
    """True when dropping ``batch``'s finished rows now saves more than the copy costs."""
    policy = policy or COMPACTION
    if not policy.enabled or batch.pending is None or steps_left < policy.min_steps_left:
        return False
    if batch.tokens.device.type not in policy.devices:
        return False
    alive = int((~batch.finished).sum())
    ended = batch.size - alive
    if alive < policy.min_rows or ended == 0 or ended < policy.min_finished * batch.size:
        return False
    if not all(type(layer) is PreallocatedLayer for layer in getattr(batch.cache, "layers", ())):
        return False
    return int(rows_to_keep(batch).numel()) < batch.size


def rows_to_keep(batch: Batch) -> torch.Tensor:
    """The live rows, plus one ended row with left padding when the live rows have none and the
    batch has some: transformers drops an all-ones attention mask, which would change the
    attention kernel (and the roundings) of the smaller batch."""
    live = ~batch.finished.to(batch.attention_mask.device)
    padded = (batch.attention_mask == 0).any(-1)
    if bool(padded.any()) and not bool(padded[live].any()):
        live[int((padded & ~live).nonzero()[0])] = True  # a passenger: ended, decoded as before
    return live.nonzero().flatten()


def compact(batch: Batch) -> tuple[Batch, torch.Tensor]:
    """A new batch of ``rows_to_keep(batch)`` (cache rows copied, grammar matchers shared), and those rows.

    ``batch`` is left as it was, to be completed by ``merge``.
    """
    keep = rows_to_keep(batch)
    cache = copy.copy(batch.cache)
    cache.layers = [layer.take_rows(keep.to(layer.device)) for layer in batch.cache.layers]
    rows = {
        name: getattr(batch, name)[keep.to(getattr(batch, name).device)]
        for name in (
            "prompt_index", "prompt_lengths", "attention_mask", "positions", "tokens",
            "logprobs", "num_tokens", "finished", "stopped", "prompt_logits", "pending",
        )
    }  # fmt: skip
    grammar = None if batch.grammar is None else batch.grammar.subset(keep.tolist())
    sub = dataclasses.replace(
        batch, cache=cache, next_logits=None, masked_logits=None, grammar=grammar, **rows
    )
    return sub, keep


def merge(batch: Batch, sub: Batch, keep: torch.Tensor, pad_token_id: int) -> None:
    """Write ``sub``'s progress back into ``batch`` in place, as if every row had been decoded there.

    Ended rows get what an uncompacted run gives them: padding tokens, zero log-probabilities,
    their positions and attention mask advanced; their new cache columns are zeros (nothing reads
    a row's cache past its end).
    """
    steps = sub.steps - batch.steps
    fed = sub.attention_mask.shape[1] - batch.attention_mask.shape[1]
    for full, part in zip(batch.cache.layers, sub.cache.layers, strict=True):
        full.merge_rows(part, keep.to(full.device))
    size = batch.size
    batch.attention_mask = _grow(batch.attention_mask, sub.attention_mask, keep, fed, 1)
    batch.tokens = _grow(batch.tokens, sub.tokens, keep, steps, pad_token_id)
    batch.logprobs = _grow(batch.logprobs, sub.logprobs, keep, steps, 0.0)
    batch.positions = batch.positions + fed
    for name in ("positions", "num_tokens", "finished", "stopped"):
        getattr(batch, name)[keep] = getattr(sub, name)
    if sub.pending is not None:
        batch.pending = torch.full((size,), pad_token_id, dtype=torch.long, device=sub.pending.device)
        batch.pending[keep] = sub.pending
    else:
        batch.pending = None
    if sub.next_logits is not None:  # stopped between a forward pass and the next append
        batch.next_logits = sub.next_logits.new_zeros((size, sub.next_logits.shape[-1]))
        batch.next_logits[keep] = sub.next_logits
    else:
        batch.next_logits = None
    batch.masked_logits = None
    if batch.grammar is not None and sub.grammar is not None:
        batch.grammar.absorb(sub.grammar, keep.tolist())


def _grow(
    full: torch.Tensor, part: torch.Tensor, keep: torch.Tensor, columns: int, fill: Any
) -> torch.Tensor:
    """``full`` with ``columns`` more columns: ``fill`` on every row, then ``part``'s rows at ``keep``."""
    extra = torch.full((full.shape[0], columns), fill, dtype=full.dtype, device=full.device)
    grown = torch.cat([full, extra], dim=1)
    grown[keep.to(full.device)] = part
    return grown


def extend_rows(
    batch: Batch,
    steps: int,
    draw: tuple[torch.Tensor | None, int],
    step: Callable[[Batch, torch.Tensor | None, int], None],
    pad_token_id: int,
    policy: CompactionPolicy | None = None,
) -> None:
    """Run ``step(batch, rows, total)`` up to ``steps`` times, compacting ``batch`` when it pays.

    ``draw`` is (the rows of the original batch these rows are, its size): sampling draws for
    the original size and takes these rows' draws, so a row's randomness never depends on its
    batch position. A compacted batch is merged back before returning (or raising).
    """
    rows, total = draw
    for done in range(steps):
        if batch.done:
            return
        if worth_compacting(batch, steps - done, policy):
            sub, keep = compact(batch)
            index = keep if rows is None else rows[keep.to(rows.device)]
            try:
                extend_rows(sub, steps - done, (index, total), step, pad_token_id, policy)
            finally:
                merge(batch, sub, keep, pad_token_id)
            return
        step(batch, rows, total)
