"""DARWIN's candidate rows on a local policy: the ``Population`` interface and its cached backend.

A population is one cycle's candidate rows decoded in lockstep (grouped by prompt). The local
backend (``darwin_local.py``) decodes through it and never looks inside: ``CachedPopulation``
keeps each row's KV cache (every prompt prefilled once, their common prefix once for all; a
replacement prefills only the copied answer onto the row's own prompt cache), and a backend
that re-encodes instead (the benchmarks' re-prefill reference) plugs in through
``Darwin.population``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from align_chains.engine.decoder import Batch, Completion, Decoder
from align_chains.engine.prefix_prefill import start_sharing_prefix
from align_chains.engine.sampling import SamplingParams
from align_chains.engine.state_transplant import supports_transplant, transplant_states
from align_chains.errors import InvalidInputError


class Population(Protocol):
    """Candidate rows decoded in lockstep; what the search needs from a decoding backend."""

    prompt_tokens: list[int]  # prompt tokens prefilled so far, per owner (user prompt)

    @property
    def finished(self) -> torch.Tensor: ...

    @property
    def num_tokens(self) -> torch.Tensor: ...

    @property
    def done(self) -> bool: ...

    def extend(
        self, steps: int | None, generator: Any, on_step: Callable[[Batch], None], compact: bool = True
    ) -> None:
        """Decode up to ``steps`` tokens; ``compact=False`` when ``on_step`` ends rows by index."""
        ...

    def completions(self) -> list[Completion]: ...

    def transplant(self, rows: Sequence[int], sources: Sequence[int]) -> None:
        """Row ``rows[j]`` takes the partial answer of ``sources[j]`` and keeps its own prompt."""
        ...

    def finish(self, rows: Sequence[int], stopped: bool = True) -> None: ...


class CachedPopulation:
    """Rows of one engine ``Batch``: each prompt prefilled once (their common prefix once for
    all); a replacement prefills only the copied answer onto the row's own prompt cache."""

    def __init__(
        self,
        decoder: Decoder,
        prompts: list[list[int]],
        params: SamplingParams,
        owners: list[int],
        num_owners: int,
    ) -> None:
        self.decoder = decoder
        self.batch, charged = start_sharing_prefix(decoder, prompts, params)
        self.owners = list(owners)
        self.prompt_tokens = [0] * num_owners
        for owner, tokens in zip(owners, charged, strict=True):
            self.prompt_tokens[owner] += tokens
        if not supports_transplant(self.batch.cache):
            raise InvalidInputError(
                f"DARWIN's replacement keeps each candidate's own prompt cache and prefills only the copied "
                f"answer onto it, which needs a full-attention KV cache; {decoder.policy.name!r} uses "
                "sliding-window or quantized cache layers. Use a model with a plain (dynamic) KV cache."
            )

    @property
    def finished(self) -> torch.Tensor:
        return self.batch.finished

    @property
    def num_tokens(self) -> torch.Tensor:
        return self.batch.num_tokens

    @property
    def done(self) -> bool:
        return self.batch.done

    def extend(
        self, steps: int | None, generator: Any, on_step: Callable[[Batch], None], compact: bool = True
    ) -> None:
        self.decoder.extend(self.batch, steps, generator, on_step, compact=compact)

    def completions(self) -> list[Completion]:
        return self.decoder.completions(self.batch)

    def transplant(self, rows: Sequence[int], sources: Sequence[int]) -> None:
        prefilled = transplant_states(self.decoder, self.batch, rows, sources)
        for row, tokens in zip(rows, prefilled, strict=True):
            self.prompt_tokens[self.owners[row]] += tokens

    def finish(self, rows: Sequence[int], stopped: bool = True) -> None:
        """End unfinished rows early: as stopped (a complete list) or by length (a per-row cap)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.batch.finished.device)
        index = index[~self.batch.finished[index]]
        self.batch.finished[index] = True
        self.batch.stopped[index] = stopped
