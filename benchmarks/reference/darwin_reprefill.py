"""BENCHMARK / TEST ONLY: DARWIN with the authors' re-prefilling, for comparison with ``Darwin``.

Not registered as a strategy and not for users. It runs the very same search as
``align_chains.strategies.darwin.Darwin`` (the same driver: mutations, scoring, replacement and
archive) with another candidate population, whose candidates keep no KV cache between segments:
every ``m`` tokens it re-encodes each candidate's prompt plus its partial answer from scratch in
one left-padded prefill, as the authors' code does with ``model.generate`` on
``augmented_instructions[i] + states[i]``. Replacement copies the source's answer tokens into the
row, whose own prompt (mutated instruction) stays, as the authors' ``random_replacement`` does.

It exists for two reasons:

- the equivalence test: with the same seed and settings it returns the same responses as
  ``Darwin`` (float32; it feeds token ids, not re-tokenized text, and keeps finished rows in
  the batch so both consume the random generator identically);
- ``benchmarks/bench_darwin.py``, which times both side by side.

Known difference, irrelevant to those uses: a multi-token stop string that spans a segment
boundary is not detected, because the engine's stop-string check only sees the current segment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from align_chains.engine.decoder import Batch, Completion, Decoder
from align_chains.engine.sampling import SamplingParams
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.darwin_population import Population


def prefill_tokens_by_owner(
    seqs: Sequence[Sequence[int]], owners: Sequence[int], num_owners: int
) -> list[int]:
    """Tokens one batched prefill of ``seqs`` runs per owner (identical sequences run once)."""
    per = [0] * num_owners
    seen: set[tuple[int, ...]] = set()
    for ids, owner in zip(seqs, owners, strict=True):
        key = tuple(ids)
        if key not in seen:
            seen.add(key)
            per[owner] += len(ids)
    return per


class RePrefillPopulation:
    """Candidates as token lists; each segment starts a fresh batch from prompt + partial answer."""

    def __init__(
        self,
        decoder: Decoder,
        prompts: list[list[int]],
        params: SamplingParams,
        owners: list[int],
        num_owners: int,
    ) -> None:
        self.decoder, self.params = decoder, params
        self.prompts = [list(p) for p in prompts]
        self.owners, self.num_owners = list(owners), num_owners
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.logprobs: list[list[float]] = [[] for _ in prompts]
        self._finished = torch.zeros(len(prompts), dtype=torch.bool)
        self._stopped = torch.zeros(len(prompts), dtype=torch.bool)
        self.steps = 0
        self.prompt_tokens = [0] * num_owners

    @property
    def finished(self) -> torch.Tensor:
        return self._finished

    @property
    def num_tokens(self) -> torch.Tensor:
        return torch.tensor([len(t) for t in self.tokens], dtype=torch.long)

    @property
    def done(self) -> bool:
        return bool(self._finished.all()) or self.steps >= self.params.max_new_tokens

    def extend(
        self, steps: int | None, generator: Any, on_step: Callable[[Batch], None], compact: bool = True
    ) -> None:
        remaining = self.params.max_new_tokens - self.steps
        if remaining <= 0:
            return
        seqs = [p + t for p, t in zip(self.prompts, self.tokens, strict=True)]
        batch = self.decoder.start(seqs, 1, self.params.model_copy(update={"max_new_tokens": remaining}))
        for owner, tokens in enumerate(prefill_tokens_by_owner(seqs, self.owners, self.num_owners)):
            self.prompt_tokens[owner] += tokens
        device = batch.finished.device
        batch.finished = self._finished.to(device).clone()  # finished rows stay in the batch, padded
        batch.stopped = self._stopped.to(device).clone()
        try:
            self.decoder.extend(batch, steps, generator, on_step, compact=compact)
        finally:  # a budget stop mid-segment keeps what was sampled
            counts = batch.num_tokens.tolist()
            new_tokens, new_logprobs = batch.tokens.tolist(), batch.logprobs.tolist()
            for row, count in enumerate(counts):
                self.tokens[row].extend(new_tokens[row][:count])
                self.logprobs[row].extend(new_logprobs[row][:count])
            self._finished = batch.finished.cpu().clone()
            self._stopped = batch.stopped.cpu().clone()
            self.steps += batch.steps

    def completions(self) -> list[Completion]:
        """Text of every row, EOS and anything from a stop string on cut (as the engine does)."""
        eos = set(self.decoder.policy.eos_token_ids)
        out = []
        for row, (ids, lps) in enumerate(zip(self.tokens, self.logprobs, strict=True)):
            generated, ended = len(ids), bool(self._stopped[row])
            if ids and ids[-1] in eos:
                ids, lps = ids[:-1], lps[:-1]
            text = self.decoder.policy.decode(ids)
            cut = min((i for i in (text.find(s) for s in self.params.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, ended = text[:cut], True
            out.append(
                Completion(
                    prompt_index=row,
                    text=text,
                    token_ids=list(ids),
                    logprobs=list(lps),
                    finish_reason="stop" if ended else "length",
                    prompt_tokens=len(self.prompts[row]),
                    generated_tokens=generated,
                )
            )
        return out

    def transplant(self, rows: Sequence[int], sources: Sequence[int]) -> None:
        """The authors' replacement: ``states[row] = states[source]``; the row's prompt stays its own."""
        tokens = [list(self.tokens[s]) for s in sources]
        logprobs = [list(self.logprobs[s]) for s in sources]
        finished, stopped = self._finished[list(sources)], self._stopped[list(sources)]
        for j, row in enumerate(rows):
            self.tokens[row], self.logprobs[row] = tokens[j], logprobs[j]
            self._finished[row], self._stopped[row] = finished[j], stopped[j]

    def finish(self, rows: Sequence[int], stopped: bool = True) -> None:
        rows = [r for r in rows if not bool(self._finished[r])]
        self._finished[rows] = True
        self._stopped[rows] = stopped


class DarwinReprefill(Darwin):
    """``Darwin`` whose candidates are re-encoded from scratch every ``m`` tokens (benchmark/test only)."""

    name: ClassVar[str] = "darwin-reprefill"
    population: ClassVar[Callable[..., Population]] = RePrefillPopulation
