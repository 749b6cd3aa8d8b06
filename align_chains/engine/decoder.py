"""The shared decoding engine: prefix-shared, batched, step-wise sampling on a policy.

Every strategy builds on four moves:

- ``start``: prefill each distinct prompt once (left-padded into one batch) and expand its
  KV cache to as many rows as that prompt needs;
- ``extend``: sample up to k tokens on every row at once;
- ``Batch.select``: keep, reorder or duplicate rows, cache included (beams, replacement);
- ``logits``: read the next-token logits of every row (guided decoding).

With a grammar in the sampling settings (``SamplingParams.grammar``) every row carries a
matcher: ``logits`` returns the policy's logits with the tokens the row's grammar forbids at
-inf (so sampling, ARGS's top-k and IVG's guided logits all see the constraint), ``append``
advances the matchers, and ``Batch.select`` copies or drops them with their rows. A row whose
grammar allows no token ends with EOS and ``finish_reason="grammar_dead_end"``.

A sampled token is fed to the model lazily, on the next read of the logits, so a response
that ends never pays for a forward pass whose output nobody reads.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from align_chains.cancellation import Cancelled, check_cancelled
from align_chains.engine.compaction import COMPACTION, extend_rows
from align_chains.engine.counters import ComputeCounters
from align_chains.engine.forward import prefill_left_padded, run
from align_chains.engine.grammar import CompiledGrammar, GrammarRows, compile_grammar
from align_chains.engine.kv_cache import expand_into_preallocated
from align_chains.engine.sampling import SamplingParams, make_generator, sample_tokens
from align_chains.errors import InvalidInputError
from align_chains.models.policy import Policy

FinishReason = Literal["stop", "length", "grammar_dead_end"]


@functools.lru_cache(maxsize=32)
def stop_criteria(tokenizer: Any, stop: tuple[str, ...]) -> Any:
    """transformers' ``StopStringCriteria`` for ``stop``, built once per (tokenizer, stop strings).

    Building one walks the whole vocabulary (about 0.5 s for SmolLM2's on a CPU); it holds no
    per-request state, so every request with the same stop strings shares it.
    """
    from transformers import StopStringCriteria

    return StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop))


@dataclass
class Completion:
    """One finished row: its text, tokens and per-token log-probabilities under the policy."""

    prompt_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int  # tokens the policy sampled for this row, EOS included


@dataclass
class Batch:
    """Rows decoded in lockstep. Row i continues prompt ``prompt_index[i]``.

    ``tokens`` holds every sampled token (padding after a row finishes); ``num_tokens`` counts
    the tokens each row produced, its EOS included.
    """

    prompt_index: torch.Tensor  # [B] long
    prompt_lengths: torch.Tensor  # [B] long: real (unpadded) prompt length per row
    cache: Any  # transformers Cache holding prompt + fed tokens
    attention_mask: torch.Tensor  # [B, S] long, aligned with the cache
    positions: torch.Tensor  # [B] long: position id of the next token to feed
    tokens: torch.Tensor  # [B, T] long
    logprobs: torch.Tensor  # [B, T] float: log pi(token) under the raw policy
    num_tokens: torch.Tensor  # [B] long
    finished: torch.Tensor  # [B] bool
    stopped: torch.Tensor  # [B] bool: ended by EOS or a stop string (else by length)
    params: SamplingParams
    prompt_width: int  # cache positions taken by the (left-padded) prompts
    prompt_logits: torch.Tensor  # [B, V]: logits after the prompt, for restarting rows
    next_logits: torch.Tensor | None = None  # [B, V]; None while a token is pending
    pending: torch.Tensor | None = None  # [B] long: sampled but not yet fed
    stop_criteria: Any = field(default=None, repr=False)
    grammar: GrammarRows | None = field(default=None, repr=False)  # one matcher per row
    masked_logits: torch.Tensor | None = None  # [B, V] next_logits under the grammar; None until read

    @classmethod
    def fresh(
        cls,
        *,
        prompt_index: torch.Tensor,
        prompt_lengths: torch.Tensor,
        cache: Any,
        attention_mask: torch.Tensor,
        prompt_width: int,
        prompt_logits: torch.Tensor,
        params: SamplingParams,
        stop_criteria: Any,
        grammar: GrammarRows | None = None,
    ) -> Batch:
        """Rows positioned right after their prompts, nothing generated yet."""
        size, device = int(prompt_index.shape[0]), prompt_index.device
        return cls(
            prompt_index=prompt_index,
            prompt_lengths=prompt_lengths,
            cache=cache,
            attention_mask=attention_mask,
            positions=prompt_lengths.clone(),
            tokens=torch.empty((size, 0), dtype=torch.long, device=device),
            logprobs=torch.empty((size, 0), dtype=torch.float32, device=device),
            num_tokens=torch.zeros(size, dtype=torch.long, device=device),
            finished=torch.zeros(size, dtype=torch.bool, device=device),
            stopped=torch.zeros(size, dtype=torch.bool, device=device),
            params=params,
            prompt_width=prompt_width,
            prompt_logits=prompt_logits,
            next_logits=prompt_logits,
            stop_criteria=stop_criteria,
            grammar=grammar,
        )

    @property
    def size(self) -> int:
        return int(self.prompt_index.shape[0])

    @property
    def steps(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def done(self) -> bool:
        return bool(self.finished.all()) or self.steps >= self.params.max_new_tokens

    def select(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Keep, reorder or duplicate rows in place, KV cache rows and grammar states included
        (no recompute; a duplicated row's grammar matcher is forked)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.tokens.device)
        if index.ndim != 1 or index.numel() == 0:
            raise InvalidInputError("select() needs a non-empty 1-D list of row indices.")
        if int(index.min()) < 0 or int(index.max()) >= self.size:
            raise InvalidInputError(f"select() row index out of range for a batch of {self.size}.")
        self.cache.batch_select_indices(index.to(self.attention_mask.device))
        for name in (
            "prompt_index", "prompt_lengths", "attention_mask", "positions", "tokens",
            "logprobs", "num_tokens", "finished", "stopped", "next_logits", "pending",
            "prompt_logits", "masked_logits",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[index.to(value.device)])
        if self.grammar is not None:
            self.grammar.select(index.tolist())

    @property
    def dead_end(self) -> torch.Tensor:
        """[B] bool: rows ended because their grammar allowed no token."""
        if self.grammar is None:
            return torch.zeros(self.size, dtype=torch.bool)
        return self.grammar.dead_end


class Decoder:
    """Runs a policy over batches of rows, counting the work it does.

    The shared decoding engine under every strategy: ``start`` prefills each distinct prompt
    once and copies its KV cache to the rows that continue it; ``logits``/``append`` (or
    ``extend``) decode all rows of a batch in one forward pass per token; ``completions``
    reads the texts back. ``generate`` does all of it for plain sampling.

    Args:
        policy: The loaded policy to run.
        counters: Where prompt tokens, generated tokens and forward passes are counted
            (default: a fresh ``ComputeCounters``).

    Examples:
        >>> from align_chains import Decoder, SamplingParams, load_policy
        >>> policy = load_policy()  # doctest: +SKIP
        >>> decoder = Decoder(policy)  # doctest: +SKIP
        >>> prompt = policy.render([{"role": "user", "content": "Name a fruit."}])  # doctest: +SKIP
        >>> params = SamplingParams(max_new_tokens=16)
        >>> answers = decoder.generate([prompt], rows=4, params=params)  # doctest: +SKIP
        >>> [a.text for a in answers], decoder.counters.forward_passes  # doctest: +SKIP
    """

    def __init__(self, policy: Policy, counters: ComputeCounters | None = None) -> None:
        self.policy = policy
        self.counters = counters if counters is not None else ComputeCounters()
        self._eos = torch.tensor(policy.eos_token_ids or (-1,), device=policy.device)

    # -- grammar ------------------------------------------------------------------------
    def compile(self, params: SamplingParams) -> CompiledGrammar | None:
        """The request's grammar checked against this policy's tokenizer (cached per pair)."""
        if params.grammar is None:
            return None
        policy = self.policy
        return compile_grammar(params.grammar, policy.tokenizer, policy.vocab_size, policy.eos_token_ids)

    def grammar_rows(self, params: SamplingParams, rows: int) -> GrammarRows | None:
        """Fresh grammar states for ``rows`` new rows, or None without a grammar."""
        compiled = self.compile(params)
        return None if compiled is None else GrammarRows.fresh(compiled, rows)

    # -- starting -----------------------------------------------------------------------
    def start(
        self,
        prompts: Sequence[Sequence[int]],
        rows: int | Sequence[int] = 1,
        params: SamplingParams | None = None,
    ) -> Batch:
        """Prefill each distinct prompt once and expand it to ``rows`` rows (per prompt)."""
        params = params or SamplingParams()
        if not prompts:
            raise InvalidInputError("start() needs at least one prompt.")
        counts = [rows] * len(prompts) if isinstance(rows, int) else list(rows)
        if len(counts) != len(prompts) or any(c < 0 for c in counts) or sum(counts) == 0:
            raise InvalidInputError(
                f"rows must be a positive int or one non-negative count per prompt "
                f"({len(prompts)} prompts, got {rows!r})."
            )
        for i, ids in enumerate(prompts):
            if len(ids) == 0:
                raise InvalidInputError(f"Prompt {i} has no tokens.")
            self.policy.check_fits(len(ids), params.max_new_tokens)
        self.compile(params)  # a grammar that does not compile fails before the prefill
        self._check_cancelled()

        # identical prompts share one prefill row
        unique: dict[tuple[int, ...], int] = {}
        row_of_prompt = [unique.setdefault(tuple(ids), len(unique)) for ids in prompts]
        distinct = list(unique)
        device = self.policy.device
        out = prefill_left_padded(
            self.policy.model, distinct, self.policy.pad_token_id, device, logits_to_keep=1
        )
        mask, width = out.mask, out.mask.shape[1]
        self.counters.forward_passes += 1
        self.counters.prompt_tokens += sum(len(ids) for ids in distinct)

        # expand: row j of the batch continues prompt prompt_of_row[j]
        prompt_of_row = torch.repeat_interleave(
            torch.arange(len(prompts), device=device), torch.tensor(counts, device=device)
        )
        source = torch.tensor(row_of_prompt, device=device)[prompt_of_row]
        cache = out.cache
        if not expand_into_preallocated(cache, source, params.max_new_tokens):
            cache.batch_select_indices(source)
        return Batch.fresh(
            prompt_index=prompt_of_row,
            prompt_lengths=mask.sum(-1)[source],
            cache=cache,
            attention_mask=mask[source],
            prompt_width=width,
            prompt_logits=out.logits[:, -1, :].float()[source],
            params=params,
            stop_criteria=self.stop_criteria(params.stop),
            grammar=self.grammar_rows(params, int(source.numel())),
        )

    def restart(self, batch: Batch, rows: Sequence[int], params: SamplingParams | None = None) -> Batch:
        """A fresh batch of ``rows[p]`` rows for each prompt p of ``batch``, without a new prefill.

        The cache is cut back to the prompts and its rows copied, so a second round of samples
        (adaptive Best-of-N's stage 2, say) costs no prompt tokens. Consumes ``batch``.
        """
        params = params or batch.params
        counts = torch.tensor(list(rows), device=batch.tokens.device)
        num_prompts = int(batch.prompt_index.max()) + 1
        if counts.numel() != num_prompts or int(counts.min()) < 0 or int(counts.sum()) == 0:
            raise InvalidInputError(
                f"restart() needs one non-negative count per prompt ({num_prompts}) and at least one row."
            )
        self.policy.check_fits(int(batch.prompt_lengths.max()), params.max_new_tokens)
        # the first row of each prompt is its representative
        first = torch.full((num_prompts,), batch.size, device=counts.device)
        first = first.scatter_reduce(
            0, batch.prompt_index, torch.arange(batch.size, device=counts.device), "amin"
        )
        source = torch.repeat_interleave(first, counts)
        prompt_of_row = torch.repeat_interleave(torch.arange(num_prompts, device=counts.device), counts)
        filled = batch.cache.get_seq_length()
        if filled > batch.prompt_width:
            batch.cache.crop(-(filled - batch.prompt_width))
        batch.cache.batch_select_indices(source.to(batch.attention_mask.device))
        return Batch.fresh(
            prompt_index=prompt_of_row,
            prompt_lengths=batch.prompt_lengths[source],
            cache=batch.cache,
            attention_mask=batch.attention_mask[source, : batch.prompt_width],
            prompt_width=batch.prompt_width,
            prompt_logits=batch.prompt_logits[source],
            params=params,
            stop_criteria=self.stop_criteria(params.stop),
            grammar=self.grammar_rows(params, int(source.numel())),
        )

    def stop_criteria(self, stop: Sequence[str]) -> Any:
        """The criteria ``append`` checks for the stop strings (None without any); cached per
        (tokenizer, stop strings), since building them costs about half a second."""
        return stop_criteria(self.policy.tokenizer, tuple(stop)) if stop else None

    # -- stepping -----------------------------------------------------------------------
    def logits(self, batch: Batch) -> torch.Tensor:
        """Next-token logits [B, V] of every row, feeding the pending token first if needed.

        Under a grammar, the tokens a row may not sample next are at -inf.
        """
        if batch.next_logits is None:
            self._feed_pending(batch)
        assert batch.next_logits is not None
        if batch.grammar is None:
            return batch.next_logits
        if batch.masked_logits is None:
            batch.masked_logits = self._constrain(batch, batch.next_logits)
        return batch.masked_logits

    def _constrain(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with each row's forbidden tokens at -inf; a row with none allowed gets EOS only."""
        assert batch.grammar is not None
        start = time.perf_counter()
        allowed = batch.grammar.allowed(logits.shape[-1]).to(logits.device)
        stuck = (~allowed.any(-1) | batch.grammar.dead_end.to(allowed.device)) & ~batch.finished
        if bool(stuck.any()):  # dead end: the row ends here, flagged, instead of sampling garbage
            allowed[stuck] = False
            allowed[stuck, int(self._eos[0])] = True
            batch.grammar.dead_end |= stuck.cpu()
        masked = logits.masked_fill(~allowed, float("-inf"))
        seconds = time.perf_counter() - start
        batch.grammar.mask_seconds += seconds
        self.counters.grammar_mask_seconds += seconds
        return masked

    def _check_cancelled(self) -> None:
        """Every forward pass is a step where the active cancellation token is honoured."""
        try:
            check_cancelled()
        except Cancelled as exc:
            raise exc.attach(counters=self.counters) from None

    def _feed_pending(self, batch: Batch) -> None:
        assert batch.pending is not None
        self._check_cancelled()
        out = run(
            self.policy.model,
            batch.pending[:, None],
            cache=batch.cache,
            past_mask=batch.attention_mask,
            positions=batch.positions[:, None],
        )
        self.counters.forward_passes += 1
        batch.cache = out.cache
        batch.attention_mask = out.mask
        batch.positions = batch.positions + 1
        batch.next_logits = out.logits[:, -1, :].float()
        batch.pending = None

    def append(self, batch: Batch, tokens: torch.Tensor) -> None:
        """Commit one chosen token per row (rows already finished get padding)."""
        if batch.done:
            raise InvalidInputError("append() on a batch that is already done.")
        self.logits(batch)
        logits = batch.next_logits  # the raw policy's: logprobs stay log pi(token), grammar or not
        assert logits is not None
        tokens = tokens.to(logits.device).long()
        logprob = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
        alive = ~batch.finished
        if batch.grammar is not None:
            start = time.perf_counter()
            batch.grammar.consume(tokens.tolist(), alive.tolist())
            self.counters.grammar_mask_seconds += time.perf_counter() - start
        tokens = torch.where(alive, tokens, torch.full_like(tokens, self.policy.pad_token_id))
        batch.tokens = torch.cat([batch.tokens, tokens[:, None]], dim=1)
        batch.logprobs = torch.cat([batch.logprobs, logprob.masked_fill(~alive, 0.0)[:, None]], dim=1)
        batch.num_tokens = batch.num_tokens + alive.long()
        ended = torch.isin(tokens, self._eos)
        if batch.stop_criteria is not None:
            ended |= batch.stop_criteria(batch.tokens, None).to(ended.device)
        ended &= alive
        batch.stopped |= ended
        batch.finished |= ended
        if batch.steps >= batch.params.max_new_tokens:
            batch.finished |= True
        self.counters.generated_tokens += int(alive.sum())
        batch.pending = tokens
        batch.next_logits = None
        batch.masked_logits = None

    def extend(
        self,
        batch: Batch,
        num_tokens: int | None = None,
        generator: torch.Generator | None = None,
        on_step: Callable[[Batch], None] | None = None,
        compact: bool = True,
    ) -> None:
        """Sample up to ``num_tokens`` more tokens on every row (all rows in one forward each).

        Once enough rows have ended, the others run as a smaller batch (``engine/compaction.py``)
        and are merged back at the end, with the same results. ``on_step`` then receives that
        smaller batch: it must act on the batch it is given (``compact=False`` for a callback
        that changes rows of ``batch`` by index).
        """
        remaining = batch.params.max_new_tokens - batch.steps
        steps = remaining if num_tokens is None else min(num_tokens, remaining)

        def step(rows: Batch, index: torch.Tensor | None, total: int) -> None:
            self._check_cancelled()
            tokens = sample_tokens(self.logits(rows), rows.params, generator, index, total)
            self.append(rows, tokens)
            if on_step is not None:
                on_step(rows)

        policy = COMPACTION if compact else dataclasses.replace(COMPACTION, enabled=False)
        try:
            extend_rows(batch, steps, (None, batch.size), step, self.policy.pad_token_id, policy)
        except Cancelled as exc:  # hand back what every row has so far
            raise exc.attach(partial=self.completions(batch)) from None

    # -- finishing ----------------------------------------------------------------------
    def completions(self, batch: Batch) -> list[Completion]:
        """Decode every row to text, cutting EOS and anything from a stop string on."""
        tokens = batch.tokens.tolist()
        logprobs = batch.logprobs.tolist()
        counts = batch.num_tokens.tolist()
        stopped = batch.stopped.tolist()
        dead = batch.dead_end.tolist()
        eos = set(self.policy.eos_token_ids)
        results = []
        for row, (ids, lps, n, ended) in enumerate(zip(tokens, logprobs, counts, stopped, strict=True)):
            ids, lps, text, ended = finish_row(self.policy, ids[:n], lps[:n], ended, eos, batch.params.stop)
            results.append(
                Completion(
                    prompt_index=int(batch.prompt_index[row]),
                    text=text,
                    token_ids=ids,
                    logprobs=lps,
                    finish_reason="grammar_dead_end" if dead[row] else ("stop" if ended else "length"),
                    prompt_tokens=int(batch.prompt_lengths[row]),
                    generated_tokens=n,
                )
            )
        return results

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        rows: int | Sequence[int] = 1,
        params: SamplingParams | None = None,
        on_step: Callable[[Batch], None] | None = None,
    ) -> list[Completion]:
        """Sample ``rows`` responses per prompt in one batched run; rows are grouped by prompt."""
        params = params or SamplingParams()
        batch = self.start(prompts, rows, params)
        self.extend(batch, generator=make_generator(params.seed, self.policy.device), on_step=on_step)
        return self.completions(batch)


def finish_row(
    policy: Policy, ids: list[int], lps: list[float], ended: bool, eos: set[int], stop: Sequence[str]
) -> tuple[list[int], list[float], str, bool]:
    """One row's tokens as an answer: the EOS token cut, the text cut at the first stop string
    (which counts as ending the row). Shared by every decoder, so answers read alike."""
    if ids and ids[-1] in eos:
        ids, lps = ids[:-1], lps[:-1]
    text = policy.decode(ids)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut >= 0:
        text, ended = text[:cut], True
    return ids, lps, text, ended
