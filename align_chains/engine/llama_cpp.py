"""Batched sampling on a llama.cpp policy: one shared prefill, every row decoded as one batch.

``LlamaCppDecoder`` offers the moves the sampling strategies use (``start``, ``extend``,
``restart``, ``completions``, ``generate``) with ``Decoder``'s meaning, over llama.cpp's batch
API: each distinct prompt is decoded once with the sequence ids of all its rows (its cells are
shared in llama.cpp's unified KV cache), then one ``llama_decode`` per step feeds the rows still
going (a finished row leaves the batch). Sampling, log-probabilities, stop strings and seeds are
the engine's own (``engine.sampling``): only the forward passes run in llama.cpp. Grammars are
refused (constrained decoding needs the engine's masks); one request at a time per policy (the
context is cleared by ``start``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from align_chains.cancellation import Cancelled, check_cancelled
from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Completion, Decoder, finish_row, stop_criteria
from align_chains.engine.sampling import SamplingParams, sample_tokens
from align_chains.errors import InvalidInputError
from align_chains.models.llama_cpp import LlamaCppPolicy
from align_chains.models.policy import Policy


@dataclass
class LlamaCppBatch:
    """Rows sampled together on a llama.cpp policy; row i is llama.cpp sequence i and continues
    distinct prompt ``distinct[i]`` (user prompt ``prompt_index[i]``)."""

    prompts: list[list[int]]  # the distinct prompts, each prefilled once
    prompt_logits: torch.Tensor  # [distinct prompts, V]: the next-token logits after each
    prompt_of: list[int]  # user prompt -> distinct prompt
    prompt_index: list[int]  # row -> user prompt
    params: SamplingParams
    tokens: torch.Tensor  # [B, steps] sampled tokens, padding once a row has finished
    logprobs: torch.Tensor  # [B, steps]
    num_tokens: torch.Tensor  # [B] tokens each row produced, EOS included
    stopped: torch.Tensor  # [B] ended by EOS or a stop string
    live: torch.Tensor  # rows still going, in the order of ``next_logits``
    next_logits: torch.Tensor  # [len(live), V]
    stop: Any = None  # the stop-string criteria (None without stop strings)

    @property
    def size(self) -> int:
        return len(self.prompt_index)

    @property
    def steps(self) -> int:
        return self.tokens.shape[1]

    @property
    def done(self) -> bool:
        return self.live.numel() == 0


class LlamaCppDecoder:
    """``Decoder``'s sampling moves on a ``LlamaCppPolicy`` (see the module docstring)."""

    def __init__(self, policy: LlamaCppPolicy, counters: ComputeCounters | None = None) -> None:
        self.policy, self.model = policy, policy.model
        self.counters = counters if counters is not None else ComputeCounters()
        self._eos = torch.tensor(policy.eos_token_ids)

    def _check(self, params: SamplingParams, rows: int, prompt_tokens: int) -> None:
        """Refuse what this backend cannot do, before any llama.cpp work."""
        if params.grammar is not None:
            raise InvalidInputError(
                "A llama.cpp policy cannot decode under a grammar (tools, schemas, grammar=, regex=): "
                "load the policy with load_policy(...) for constrained decoding, or pass constrain=False."
            )
        if rows > self.model.max_sequences:
            raise InvalidInputError(
                f"{rows} rows exceed the llama.cpp policy's max_sequences={self.model.max_sequences}: "
                "load it with a larger max_sequences or ask for fewer samples."
            )
        need = prompt_tokens + rows * params.max_new_tokens
        if need > self.model.n_ctx:
            raise InvalidInputError(
                f"This request needs {need} KV cells ({prompt_tokens} prompt tokens + {rows} rows x "
                f"{params.max_new_tokens} new tokens) but the llama.cpp policy has n_ctx={self.model.n_ctx}: "
                "load it with load_llama_cpp_policy(..., n_ctx=...) large enough, or ask for fewer tokens."
            )

    def _fresh(
        self,
        batch_prompts: tuple[list[list[int]], torch.Tensor, list[int]],
        rows_of: list[int],
        params: SamplingParams,
    ) -> LlamaCppBatch:
        prompts, logits, prompt_of = batch_prompts
        index = [p for p, count in enumerate(rows_of) for _ in range(count)]
        size = len(index)
        live = torch.arange(size)
        return LlamaCppBatch(
            prompts=prompts,
            prompt_logits=logits,
            prompt_of=prompt_of,
            prompt_index=index,
            params=params,
            tokens=torch.zeros((size, 0), dtype=torch.long),
            logprobs=torch.zeros((size, 0)),
            num_tokens=torch.zeros(size, dtype=torch.long),
            stopped=torch.zeros(size, dtype=torch.bool),
            live=live,
            next_logits=logits[torch.tensor([prompt_of[p] for p in index], dtype=torch.long)],
            stop=stop_criteria(self.policy.tokenizer, tuple(params.stop)) if params.stop else None,
        )

    def start(
        self,
        prompts: Sequence[Sequence[int]],
        rows: int | Sequence[int] = 1,
        params: SamplingParams | None = None,
    ) -> LlamaCppBatch:
        """Prefill each distinct prompt once, shared by all its rows' sequences."""
        params = params or SamplingParams()
        counts = [rows] * len(prompts) if isinstance(rows, int) else list(rows)
        if not prompts or len(counts) != len(prompts) or min(counts) < 0 or sum(counts) == 0:
            raise InvalidInputError(f"start() needs prompts and one non-negative count each (got {rows!r}).")
        if any(len(ids) == 0 for ids in prompts):
            raise InvalidInputError("A prompt has no tokens.")
        unique: dict[tuple[int, ...], int] = {}
        prompt_of = [unique.setdefault(tuple(ids), len(unique)) for ids in prompts]
        distinct = [list(ids) for ids in unique]
        self._check(params, sum(counts), sum(len(ids) for ids in distinct))
        self._cancelled()
        seqs_of: list[list[int]] = [[] for _ in distinct]
        for row, p in enumerate(p for p, count in enumerate(counts) for _ in range(count)):
            seqs_of[prompt_of[p]].append(row)
        self.model.clear()
        entries = [
            (token, pos, seqs_of[d], pos == len(ids) - 1)
            for d, ids in enumerate(distinct)
            for pos, token in enumerate(ids)
            if seqs_of[d]
        ]
        logits = torch.zeros((len(distinct), self.model.n_vocab))
        logits[[d for d in range(len(distinct)) if seqs_of[d]]] = self.model.decode(entries)
        self.counters.forward_passes += 1
        self.counters.prompt_tokens += len(entries)
        return self._fresh((distinct, logits, prompt_of), counts, params)

    def restart(
        self, batch: LlamaCppBatch, rows: Sequence[int], params: SamplingParams | None = None
    ) -> LlamaCppBatch:
        """A fresh batch of ``rows[p]`` rows for user prompt p, on the prompts' cached cells (no new
        prefill): the answers' cells are dropped and the prompt cells shared by the new rows."""
        params = params or batch.params
        counts = list(rows)
        if len(counts) != len(batch.prompt_of) or min(counts) < 0 or sum(counts) == 0:
            raise InvalidInputError(
                f"restart() needs one non-negative count per prompt ({len(batch.prompt_of)})."
            )
        # staging ids sit above both the old rows and the new ones
        prompt_tokens = sum(len(ids) for ids in batch.prompts)
        self._check(params, max(sum(counts), batch.size) + len(batch.prompts), prompt_tokens)
        first: dict[int, int] = {}
        for row, p in enumerate(batch.prompt_index):
            first.setdefault(batch.prompt_of[p], row)
        model, stage = self.model, self.model.max_sequences - 1  # staging ids from the top
        for d, row in first.items():  # each distinct prompt's cells, held by a staging sequence
            model.keep(row, len(batch.prompts[d]))
            model.copy(row, stage - d)
        for row in range(batch.size):
            model.keep(row, 0)
        new_index = [p for p, count in enumerate(counts) for _ in range(count)]
        for row, p in enumerate(new_index):
            if batch.prompt_of[p] not in first:
                raise InvalidInputError(f"restart(): prompt {p} had no row, so its prompt is not cached.")
            model.copy(stage - batch.prompt_of[p], row)
        for d in first:
            model.keep(stage - d, 0)
        return self._fresh((batch.prompts, batch.prompt_logits, batch.prompt_of), counts, params)

    def _cancelled(self) -> None:
        try:
            check_cancelled()
        except Cancelled as exc:
            raise exc.attach(counters=self.counters) from None

    def _step(self, batch: LlamaCppBatch, generator: torch.Generator | None) -> None:
        """Sample one token on every live row, then feed the ones still going in one decode."""
        live, params = batch.live, batch.params
        tokens = sample_tokens(batch.next_logits, params, generator, live, batch.size)
        logprob = torch.log_softmax(batch.next_logits.float(), -1).gather(-1, tokens[:, None])[:, 0]
        column = torch.full((batch.size,), self.policy.pad_token_id, dtype=torch.long)
        column[live] = tokens
        logprobs = torch.zeros(batch.size)
        logprobs[live] = logprob
        batch.tokens = torch.cat([batch.tokens, column[:, None]], 1)
        batch.logprobs = torch.cat([batch.logprobs, logprobs[:, None]], 1)
        batch.num_tokens[live] += 1
        self.counters.generated_tokens += live.numel()
        ended = torch.isin(tokens, self._eos)
        if batch.stop is not None:
            ended |= batch.stop(batch.tokens[live], None).to(torch.bool)
        batch.stopped[live] |= ended
        going = live[~ended] if batch.steps < params.max_new_tokens else live[:0]
        batch.live = going
        if going.numel() == 0:
            batch.next_logits = batch.next_logits[:0]
            return
        self._cancelled()
        fed, at = column[going].tolist(), batch.steps - 1
        lengths = [len(batch.prompts[batch.prompt_of[p]]) for p in batch.prompt_index]
        rows = going.tolist()
        entries = [(token, lengths[row] + at, [row], True) for row, token in zip(rows, fed, strict=True)]
        batch.next_logits = self.model.decode(entries)
        self.counters.forward_passes += 1

    def extend(
        self,
        batch: LlamaCppBatch,
        num_tokens: int | None = None,
        generator: torch.Generator | None = None,
        on_step: Callable[[LlamaCppBatch], None] | None = None,
    ) -> None:
        """Sample up to ``num_tokens`` more tokens on every row still going (default: to the end)."""
        steps = batch.params.max_new_tokens - batch.steps if num_tokens is None else num_tokens
        try:
            for _ in range(steps):
                if batch.done:
                    break
                self._step(batch, generator)
                if on_step is not None:
                    on_step(batch)
        except Cancelled as exc:
            raise exc.attach(partial=self.completions(batch)) from None

    def completions(self, batch: LlamaCppBatch) -> list[Completion]:
        """Every row as a ``Completion`` (EOS cut, text cut at the first stop string)."""
        eos = set(self.policy.eos_token_ids)
        results = []
        rows = zip(batch.tokens.tolist(), batch.logprobs.tolist(), batch.num_tokens.tolist(), strict=True)
        for row, (ids, lps, n) in enumerate(rows):
            stopped = bool(batch.stopped[row])
            ids, lps, text, ended = finish_row(self.policy, ids[:n], lps[:n], stopped, eos, batch.params.stop)
            p = batch.prompt_index[row]
            results.append(
                Completion(
                    prompt_index=p,
                    text=text,
                    token_ids=ids,
                    logprobs=lps,
                    finish_reason="stop" if ended else "length",
                    prompt_tokens=len(batch.prompts[batch.prompt_of[p]]),
                    generated_tokens=n,
                )
            )
        return results

    #: the engine's own ``generate`` (start, extend, completions), over this decoder's moves
    generate = Decoder.generate


def decoder_for(policy: Policy, counters: ComputeCounters | None = None) -> Decoder | LlamaCppDecoder:
    """The decoder that samples on ``policy``: llama.cpp's batch API for a llama.cpp policy, else
    the engine's ``Decoder``."""
    if isinstance(policy, LlamaCppPolicy):
        return LlamaCppDecoder(policy, counters)
    return Decoder(policy, counters)
