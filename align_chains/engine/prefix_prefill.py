"""Start a batch of distinct prompts that share a long prefix, prefilling the prefix once.

DARWIN's candidates decode from n rewrites of one instruction: their prompts share the chat
template's header, any system message and earlier turns, and differ only in the last user
turn. ``Decoder.start`` would prefill each distinct prompt in full. Here the common prefix is
prefilled once (one row), its KV cache copied to every prompt, and only the differing suffixes
are prefilled on top, left-padded against each other: the padding sits between prefix and
suffix and is masked out, with position ids that skip it, so every row sees exactly its own
prompt (tested against a plain forward pass).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from align_chains.engine.decoder import Batch, Decoder
from align_chains.engine.forward import left_pad, run
from align_chains.engine.kv_cache import expand_into_preallocated
from align_chains.engine.sampling import SamplingParams

MIN_SHARED = 16  # below this many shared tokens the second forward pass is not worth it


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own."""
    shortest = min(len(p) for p in prompts)
    first = prompts[0]
    length = 0
    while length < shortest - 1 and all(p[length] == first[length] for p in prompts):
        length += 1
    return length


def start_sharing_prefix(
    decoder: Decoder, prompts: list[list[int]], params: SamplingParams
) -> tuple[Batch, list[int]]:
    """Like ``decoder.start(prompts, 1, params)``, with the prompts' common prefix prefilled once.

    Also returns the prompt tokens prefilled on behalf of each prompt (a repeated prompt costs
    nothing; the shared prefix is charged to the first prompt). Falls back to ``decoder.start``
    when the prompts are all identical, share fewer than ``MIN_SHARED`` tokens, or the cache is
    not one the engine can preallocate.
    """
    unique: dict[tuple[int, ...], int] = {}
    row_of_prompt = [unique.setdefault(tuple(ids), len(unique)) for ids in prompts]
    distinct = [list(ids) for ids in unique]
    first_of = {r: i for i, r in reversed(list(enumerate(row_of_prompt)))}
    charged = [len(distinct[r]) if first_of[r] == i else 0 for i, r in enumerate(row_of_prompt)]
    shared = common_prefix_length(distinct) if len(distinct) > 1 else 0
    if shared < MIN_SHARED:
        return decoder.start(prompts, 1, params), charged
    policy, counters = decoder.policy, decoder.counters
    for ids in distinct:
        policy.check_fits(len(ids), params.max_new_tokens)
    device = policy.device
    suffixes = [ids[shared:] for ids in distinct]
    width = max(len(s) for s in suffixes)
    out = run(policy.model, torch.tensor([distinct[0][:shared]], device=device))
    counters.forward_passes += 1
    counters.prompt_tokens += shared
    cache = out.cache
    if not expand_into_preallocated(
        cache, torch.zeros(len(distinct), dtype=torch.long, device=device), width + params.max_new_tokens
    ):
        charged[0] += shared  # the prefix pass is wasted, but the fallback is correct
        return decoder.start(prompts, 1, params), charged
    # the padding sits between prefix and suffix, masked out; positions skip it
    suffix_ids, suffix_mask = left_pad(suffixes, policy.pad_token_id, device)
    out = run(policy.model, suffix_ids, cache=cache, new_mask=suffix_mask, logits_to_keep=1)
    mask = out.mask
    counters.forward_passes += 1
    counters.prompt_tokens += sum(len(s) for s in suffixes)
    source = torch.tensor(row_of_prompt, device=device)
    cache = out.cache
    if len(prompts) != len(distinct):
        cache.batch_select_indices(source)
    charged = [len(suffixes[r]) if first_of[r] == i else 0 for i, r in enumerate(row_of_prompt)]
    charged[0] += shared
    batch = Batch.fresh(
        prompt_index=torch.arange(len(prompts), device=device),
        prompt_lengths=mask.sum(-1)[source],
        cache=cache,
        attention_mask=mask[source],
        prompt_width=shared + width,
        prompt_logits=out.logits[:, -1, :].float()[source],
        params=params,
        stop_criteria=decoder.stop_criteria(params.stop),
        grammar=decoder.grammar_rows(params, len(prompts)),
    )
    return batch, charged
