"""IVG: Integrated Value Guidance (Liu et al., EMNLP 2024 Findings), token- and chunk-level.

- Token level (implicit value): next-token logits = base + w * (tuned - untuned), then
  temperature / top-k / top-p and a sample. The guide pair is an ``ImplicitReward``: two LMs
  sharing the policy's vocabulary, or the policy itself with and without a principle in its
  system prompt (classifier-free-guidance style; one forward per token serves both prompts).
- Chunk level (explicit value): W beams per prompt; every L tokens each beam has been extended
  into K samples; the W*K partial responses are scored (by any RewardModel on re-tokenised
  text, or by the implicit reward sum log pi_tuned - sum log pi_untuned read from log-probs the
  decoder already has) and the top W are kept and duplicated K times by selecting KV-cache rows
  of every model involved. Nothing is recomputed. Exact rewards with prefix rules score many
  partial answers alike: ``ties="spread"`` cuts such ties toward parents not yet kept
  (``select_beams``), so the kept beams do not all descend from one.

Either signal works alone; both together are IVG.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.lockstep import Lockstep, View
from align_chains.engine.sampling import SamplingParams, make_generator, sample_tokens
from align_chains.errors import InvalidInputError
from align_chains.rewards.base import RewardModel
from align_chains.rewards.implicit import ImplicitReward, check_shared_vocabulary
from align_chains.rewards.prefix import prefix_scores
from align_chains.strategies.base import (
    OnCommit,
    SearchRun,
    Strategy,
    StrategyResult,
    register_strategy,
    score_texts,
)
from align_chains.strategies.best_of_n import best_per_prompt
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.declarations import Bound, Cost, MemoryPlan, MemoryRequest

# Token-level guidance weight per guide. A real tuned/untuned pair: the paper's w = 1. The
# principle guide: untuned = the base view, so base + w (tuned - base) at w = 1 is just the
# principled prompt; guidance beyond prompting needs w > 1 (classifier-free-guidance style).
# Chosen by a sweep on benchmarks/data/fidelity_dev_prompts.txt (docs/guided_decoding.md).
PAIR_GUIDANCE_SCALE = 1.0
PRINCIPLE_GUIDANCE_SCALE = 1.5


def select_beams(
    values: torch.Tensor, parent: torch.Tensor, beams: int, ties: Literal["order", "spread"]
) -> torch.Tensor:
    """Indices ``[num, beams]`` of the rows kept from ``values [num, width]``, best first.

    Rows of higher value always come first. ``"order"`` cuts equal values by row order (the
    reference). ``"spread"`` cuts them by how many rows of the same ``parent`` (the beam a row
    continues) rank above the row, then by row order: among tied rows, children of parents with
    fewer rows kept go first, so a search whose prefix rule scores most partial answers alike
    keeps beams from several parents instead of the first parent's K children. Distinct values
    select exactly what ``"order"`` selects. Why: exact prefix rules (keywords used so far, no
    banned word yet) tie most rows at 8 tokens (docs/task_map.md).
    """
    if ties == "order":
        return values.topk(beams, dim=-1).indices
    width = values.shape[-1]
    row = torch.arange(width, device=values.device)
    # above[p, i, j]: row j ranks above row i before diversity (higher value, or equal and earlier)
    v_i, v_j = values[:, :, None], values[:, None, :]
    above = (v_j > v_i) | ((v_j == v_i) & (row[None, :] < row[:, None]))
    siblings_above = (above & (parent[:, :, None] == parent[:, None, :])).sum(-1)
    by_siblings = torch.sort(siblings_above, dim=-1, stable=True).indices  # then row order
    by_value = torch.sort(values.gather(-1, by_siblings), dim=-1, descending=True, stable=True).indices
    return by_siblings.gather(-1, by_value)[:, :beams]


@register_strategy
class ValueGuided(Strategy):
    """IVG settings. ``token_guidance``/``chunk_value`` of None mean: implicit guidance when a
    guide (principle or tuned/untuned pair) is available, else chunk-level search on the reward.

    Args:
        w: Token-level guidance weight: logits = base + w * (tuned - untuned).
        beams: W, beams kept after every chunk.
        samples: K, samples each beam is extended into per chunk.
        chunk_tokens: L, tokens per chunk between selections.
        token_guidance: Implicit token-level guidance on or off (None: on with a guide).
        chunk_value: ``"implicit"``, ``"reward"`` or ``"none"`` (None: implicit with a guide,
            else the reward).
        principle: Guide the policy with itself, read with and without this principle.
        ties: Chunk decisions whose cut falls inside equal values: ``"order"`` keeps the first
            rows, ``"spread"`` spreads the kept beams over parents (``select_beams``).

    Examples:
        >>> from align_chains import SamplingParams, ValueGuided, load_policy, load_reward
        >>> ivg = ValueGuided(principle="Answer concisely and politely", beams=2, samples=2)
        >>> ivg.run("Hi!", load_policy(), load_reward(), SamplingParams(max_new_tokens=48))  # doctest: +SKIP
    """

    name: ClassVar[str] = "value-guided"
    aliases: ClassVar[tuple[str, ...]] = ("ivg", "value_guided")
    card: ClassVar[StrategyCard | None] = StrategyCard(
        "Integrated Value Guidance (IVG)",
        "adds a guide's logit difference at every token and/or beam-searches chunks by value",
        "one extra row per token (principle guide) plus chunk scoring",
        "a tuned/untuned pair or a principle guide; its chunk search on a reward with a prefix rule "
        "matched Best-of-N's success at equal tokens on the [task map](task_map.md) (pooled; ahead "
        'on keywords at 16x within noise; `ties="spread"` +0.05 at 4x within noise) and chose '
        "answers of lower reward on format",
        page="guided_decoding.md",
    )
    streams: ClassVar[bool] = True
    needs_policy_internals: ClassVar[str | None] = "the policy's next-token logits at every step (IVG)"

    w: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        allow_inf_nan=False,
        description="Token-level guidance weight (None: 1 for a tuned/untuned pair, "
        f"{PRINCIPLE_GUIDANCE_SCALE} for a principle guide).",
    )
    beams: int = Field(2, ge=1, le=64, description="W: beams kept after every chunk.")
    samples: int = Field(2, ge=1, le=64, description="K: samples each beam is extended into.")
    chunk_tokens: int = Field(30, ge=1, description="L: tokens per chunk between selections.")
    token_guidance: bool | None = Field(None, description="Implicit token-level guidance (None: auto).")
    chunk_value: Literal["implicit", "reward", "none"] | None = Field(
        None, description="Chunk scoring: implicit value, the reward model, or no chunk search (None: auto)."
    )
    principle: str | None = Field(
        None, min_length=1, description="Guide the policy with itself, with and without this principle."
    )
    ties: Literal["order", "spread"] = Field(
        "order",
        description="Rows tied at the cut of a chunk decision: 'order' keeps the first rows (the "
        "reference); 'spread' keeps children of parents with fewer rows kept first (select_beams).",
    )

    work_bounds: ClassVar[tuple[Bound, ...]] = (
        Bound("beams", 16),
        Bound("samples", 16),
        Bound("chunk_tokens", 1024),
    )

    def cost(self, params: SamplingParams) -> Cost:
        """beams x samples rows; the policy and, at most, a tuned and an untuned guide decoded in
        lockstep (3 views); the rows scored at the end of every chunk."""
        t, width = params.max_new_tokens, self.beams * self.samples
        chunks = math.ceil(t / self.chunk_tokens)
        factors = ("beams", "samples", "max_tokens", "chunk_tokens")
        return Cost(width * t, 3 * (1 + t), width * chunks, width, factors=factors)

    def memory(self, request: MemoryRequest) -> MemoryPlan:
        """The guide views (the policy with and without the principle, or a tuned/untuned pair)
        are more blocks of the same Lockstep batch: views x the rows, views x the prompts."""
        rows = request.prompts * self.beams * self.samples
        views = 2 if self.principle else (3 if self.token_guidance else 1)
        plan = MemoryPlan(
            rows, request.decoding(rows * views, request.prompts * views), request.reward_scoring(rows)
        )
        if views == 1:
            return plan
        return plan.noted(f"IVG: {views} views decoded as one batch of {views} x the rows")

    def guidance_scale(self, guide: ImplicitReward | None) -> float:
        """``w`` as set, else the default for this guide: above 1 for a principle, 1 for a pair."""
        if self.w is not None:
            return self.w
        principled = guide.principle is not None if guide is not None else self.principle is not None
        return PRINCIPLE_GUIDANCE_SCALE if principled else PAIR_GUIDANCE_SCALE

    def resolved(self, guide: ImplicitReward | None) -> tuple[bool, str]:
        """(token guidance on?, chunk value) once the guide is known; raises on impossible asks."""
        token = self.token_guidance if self.token_guidance is not None else guide is not None
        chunk = self.chunk_value or ("implicit" if guide is not None else "reward")
        if guide is None and (token or chunk == "implicit"):
            raise InvalidInputError(
                "Implicit value guidance needs a guide: set principle='...' (the policy guides itself) "
                "or pass tuned/untuned models; or use chunk_value='reward' with token_guidance=False."
            )
        if not token and chunk == "none":
            raise InvalidInputError(
                "Both guidance signals are off (token_guidance=False, chunk_value='none'): that is plain "
                "sampling. Turn one of them on."
            )
        return token, chunk

    def _search(
        self, run: SearchRun, *, on_commit: OnCommit | None = None, guide: ImplicitReward | None = None
    ) -> list[StrategyResult]:
        policy, params, counters = run.policy, run.params, run.counters
        if guide is None and self.principle is not None:
            guide = ImplicitReward(policy, principle=self.principle)
        token, chunk = self.resolved(guide)
        w = self.guidance_scale(guide)
        if guide is not None:
            check_shared_vocabulary(policy, guide.tuned, "Value guidance (IVG)")
            check_shared_vocabulary(policy, guide.untuned, "Value guidance (IVG)")
        num = len(run.conversations)
        width = self.beams * self.samples if chunk != "none" else 1
        views = [View(policy, run.token_ids)]
        if guide is not None:
            views.extend(guide.views(run.conversations))
        lock = Lockstep(views, [width] * num, params, counters)
        run.partial = lambda: best_per_prompt(self.name, lock.completions(), None, counters, num)
        values, trace = self._decode(run, lock, guide, (token, chunk, w), on_commit)
        completions = lock.completions()
        if values is None:  # token-level only: score the answer with the reward model
            scores = score_texts(run.reward, run.conversations, [c.text for c in completions], counters)
        else:
            scores = values.tolist()
        details = {
            "token_guidance": token,
            "w": w if token else 0.0,
            "chunk_value": chunk,
            "beams": self.beams if chunk != "none" else 1,
            "samples": self.samples if chunk != "none" else 1,
            "chunk_tokens": self.chunk_tokens if chunk != "none" else None,
            "ties": self.ties if chunk != "none" else None,
            "guide": guide.name if guide is not None else None,
            "value": "reward" if values is None else chunk,
        }
        results = best_per_prompt(self.name, completions, scores, counters, num, details=[details] * num)
        for p, result in enumerate(results):
            result.counters.reward_items = counters.reward_items
            result.counters.prompt_tokens = lock.prompt_tokens[p]  # the guides' prefills included
            result.trace = [r for r in trace if r["prompt"] == p] or result.trace
        return results

    def _decode(
        self,
        run: SearchRun,
        lock: Lockstep,
        guide: ImplicitReward | None,
        guidance: tuple[bool, str, float],
        on_commit: OnCommit | None,
    ) -> tuple[torch.Tensor | None, list[dict]]:
        """Decode chunk by chunk (or in one go without a chunk value), keeping the ``beams`` best
        rows per prompt after each chunk. Returns the last chunk's values (None without) and the trace."""
        params, progress, counters = run.params, run.progress, run.counters
        token, chunk, w = guidance
        num = len(run.conversations)
        width = self.beams * self.samples if chunk != "none" else 1
        generator = make_generator(params.seed, run.policy.device)
        prompt_of_row = torch.arange(num).repeat_interleave(width)
        copy = torch.zeros(num * width, dtype=torch.long)  # index of a row among its beam's K copies
        parent = torch.arange(width).repeat(num, 1)  # the beam each row continues (first chunk: itself)
        emitted = [0] * num
        trace: list[dict] = []
        values: torch.Tensor | None = None
        progress.stage("value-guided decoding", params.max_new_tokens)
        while not lock.done:
            start_finished = lock.finished.cpu()
            for _ in range(self.chunk_tokens if chunk != "none" else params.max_new_tokens):
                if lock.done:
                    break
                logits = self._guided_logits(lock, token, w)
                alive = ~lock.finished
                tokens = sample_tokens(logits, params, generator)
                lock.append(tokens)
                if on_commit is not None and chunk == "none":
                    for p in alive.nonzero().flatten().tolist():
                        on_commit(p, [int(tokens[p])])
                progress.advance()
            if chunk == "none":
                break
            values = self._chunk_values(
                lock, chunk, guide, run.reward, run.conversations, prompt_of_row, counters
            )
            # a finished beam's K copies are identical: only its first copy competes
            ranked = values.masked_fill(start_finished & (copy > 0), float("-inf")).view(num, width)
            # final pick (lock done): ties (a finished beam's copies) go to the first
            keep = None if lock.done else select_beams(ranked, parent, self.beams, self.ties)  # [num, W]
            trace.extend(self._trace_records(lock.base.steps, values, parent, keep))
            if keep is None:
                break
            rows = (keep + torch.arange(num)[:, None] * width).repeat_interleave(self.samples, dim=1)
            lock.select(rows.flatten())
            copy = torch.arange(self.samples).repeat(num * self.beams)
            parent = torch.arange(self.beams).repeat_interleave(self.samples).repeat(num, 1)
            if on_commit is not None:
                self._emit_shared_prefix(lock, num, width, emitted, on_commit)
        return values, trace

    @staticmethod
    def _trace_records(
        step: int, values: torch.Tensor, parent: torch.Tensor, keep: torch.Tensor | None
    ) -> list[dict]:
        """One record per row of a chunk decision: its value, the beam it continues and whether
        it was kept (absent at the final pick)."""
        width = parent.shape[1]
        kept = None if keep is None else [set(rows) for rows in keep.tolist()]
        records = []
        for i, (v, b) in enumerate(zip(values.tolist(), parent.flatten().tolist(), strict=True)):
            record = {"step": step, "prompt": i // width, "row": i % width, "value": float(v), "parent": b}
            records.append(record if kept is None else {**record, "kept": i % width in kept[i // width]})
        return records

    @staticmethod
    def _guided_logits(lock: Lockstep, token: bool, w: float) -> torch.Tensor:
        base = lock.logits(0)
        if not token or w == 0:
            return base
        tuned, untuned = lock.logits(1), lock.logits(2)
        vocab = min(base.shape[-1], tuned.shape[-1], untuned.shape[-1])
        guided = base[:, :vocab] + w * (tuned[:, :vocab] - untuned[:, :vocab]).to(base.device)
        if vocab < base.shape[-1]:  # tokens the guides do not have keep the base logit
            guided = torch.cat([guided, base[:, vocab:]], dim=-1)
        # a grammar masks every view alike (-inf - -inf is nan): forbidden tokens stay -inf
        return torch.where(torch.isneginf(base), base, guided)

    @staticmethod
    def _chunk_values(
        lock: Lockstep,
        chunk: str,
        guide: ImplicitReward | None,
        reward: RewardModel,
        conversations: list,
        prompt_of_row: torch.Tensor,
        counters: ComputeCounters,
    ) -> torch.Tensor:
        if chunk == "implicit":
            assert guide is not None
            counters.reward_calls += 1
            counters.reward_items += lock.size
            tuned = lock.logprobs(1).sum(-1).cpu()
            untuned = lock.logprobs(2).sum(-1).cpu()
            return guide.beta * (tuned - untuned)
        # a reward with a prefix rule judges unfinished chunks by it (the full reward once finished)
        owners = [conversations[int(p)] for p in prompt_of_row]
        scores = prefix_scores(reward, owners, lock.completions(), lock.base.params.max_new_tokens, counters)
        return torch.tensor(scores, dtype=torch.float32)

    @staticmethod
    def _emit_shared_prefix(
        lock: Lockstep, num: int, width: int, emitted: list[int], on_commit: OnCommit
    ) -> None:
        """Stream the tokens every surviving beam of a prompt agrees on."""
        batch = lock.base
        tokens = lock.rows_of(batch.tokens, 0).view(num, width, -1)
        counts = lock.rows_of(batch.num_tokens, 0).view(num, width).min(-1).values
        same = (tokens == tokens[:, :1]).all(1).long().cumprod(-1).sum(-1)
        shared = torch.minimum(same, counts).tolist()
        for p in range(num):
            if shared[p] > emitted[p]:
                on_commit(p, tokens[p, 0, emitted[p] : shared[p]].tolist())
                emitted[p] = shared[p]
