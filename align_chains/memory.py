"""Peak memory of one request, estimated before any model work: the project's one estimator.

``estimate_memory(strategy, policy, reward, params, prompt_tokens)`` walks the phases a request
goes through and reports the one that holds the most at once (``peak_phase``), by component:

- ``weights``: the policy's parameters and buffers (held throughout);
- ``kv_cache``: the caches alive in that phase: the prefill's growing cache (distinct prompts x
  prompt length), or the engine's preallocated one (rows x (prompt + max_new_tokens)), plus
  DARWIN's replacement copies;
- ``activations``: the largest transient of one forward in that phase: the prefill's MLP and
  attention tensors, or a decode step's grouped-query key/value expansion (transformers repeats
  the KV heads when a mask is passed);
- ``logits``: the per-step ``[rows, V]`` logits and the sampler's copies of them (fp32 and
  fp64), plus the prompt logits each row keeps;
- ``sea_tensors`` / ``optimizer_state``: SEA's ``[rows, L, V]`` fp32 tensors (its logit
  variable, the policy's logits along the response, their softmaxes and gradients) and
  Adam's two moments plus the gradient;
- ``reward``: the reward model's own weights (zero when it is the policy itself), plus its
  caches (ARGS's incremental classifier cache, early rejection's judge cache, the soft scorer's
  prefix cache and saved activations) and its scoring batch in the phases where the decoded
  rows are alive.

The phases: the prefill (each distinct prompt once), the expansion into the preallocated cache
(``engine/kv_cache.py`` replaces the prefill's layers one by one, so the two caches never exist
whole at once), decoding, and per strategy SEA's backward and DARWIN's first-answer/mutation
batch, candidate prefill and state transplant. Counts come from reading those code paths
(documented next to each term) and were checked against measured peaks on CPU
(``benchmarks/memory_check.py``, table in ``docs/gpu.md``). The policy can be a loaded
``Policy``, a transformers config, or a model directory / id / embedded name (then only its
config is read: a dry run loads no weights). The server's admission control refuses a request
whose estimated peak is over its memory budget (``align-chains serve --max-request-memory``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from align_chains.engine.sampling import SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.settings import resolve_dtype

MiB = 1024**2

# A decode step holds the model's logits [rows, V] (model dtype), their fp32 copy kept as
# ``next_logits``, the sampler's temperature-scaled copy and softmax (fp32), its fp64 CDF,
# and ``append``'s log-softmax (fp32): 4 + 4 + 4 + 8 + 4 bytes per entry beyond the model's own.
_SAMPLING_BYTES = 24
# top-k / top-p filtering adds a masked copy, sorted values (fp32) and their order (int64).
_FILTER_BYTES = 16
# SEA: fp32 [rows, L, V] tensors alive at the backward of one iteration: the variable, noise,
# noisy logits, softmax(noisy) and its product with log p, softmax(noisy / tau_r), the
# policy's step logits and their log-softmax, and the gradient of the noisy logits (9); the
# backward adds the gradients flowing through the two softmaxes, the product and the scaling (4).
_SEA_STEP_TENSORS = 13
# Adam keeps exp_avg and exp_avg_sq next to the variable's .grad: 3 more fp32 copies.
_ADAM_TENSORS = 3
# Per layer and token, the tensors a Llama-style block saves for backward, in units of
# hidden (h) and intermediate (i) sizes: norms, q/k/v/o, residuals (~7h), MLP gate/up/act/product (4i).
_SAVED_H, _SAVED_I = 7, 4
# ARGS's incremental classifier cache reserves room for k candidate columns (see incremental.py).
_ARGS_EXTRA_COLUMNS = 64


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder model that memory depends on."""

    name: str
    parameters: int  # parameters + buffers, counted once (tied embeddings once)
    dtype: torch.dtype
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def bytes_per_value(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def weight_bytes(self) -> int:
        return self.parameters * self.bytes_per_value

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token in one row, all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_value

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        """The shape of a loaded transformers model (its actual dtype and parameter count)."""
        seen: set[int] = set()
        count = 0
        dtype = None
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            count += tensor.numel() * tensor.element_size()
            if dtype is None and tensor.is_floating_point():
                dtype = tensor.dtype
        dtype = dtype or torch.float32
        shape = cls.from_config(model.config, dtype, parameters=0)
        return _replace(shape, parameters=count // torch.empty((), dtype=dtype).element_size())

    @classmethod
    def from_config(cls, config: Any, dtype: torch.dtype, *, parameters: int | None = None) -> ModelShape:
        """The shape from a config; parameters are counted on a meta-device model (no memory)."""
        text = getattr(config, "get_text_config", lambda: config)()
        hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
        heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 1))
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text, "head_dim", None) or hidden // max(heads, 1))
        if parameters is None:
            parameters = _count_parameters(config)
        return cls(
            name=str(getattr(config, "name_or_path", "") or type(config).__name__),
            parameters=parameters,
            dtype=dtype,
            layers=int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0)),
            hidden=hidden,
            intermediate=int(getattr(text, "intermediate_size", 0) or 4 * hidden),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=int(getattr(text, "vocab_size", 0)),
        )

    def forward_bytes(self, rows: int, new: int, context: int) -> int:
        """Largest transient of one forward over ``new`` tokens per row attending to ``context``:
        the MLP's intermediate tensors and the residual stream, and the grouped-query expansion
        of one layer's keys and values (transformers repeats KV heads when a mask is passed)."""
        b = self.bytes_per_value
        mlp = rows * new * (3 * self.intermediate + 4 * self.hidden) * b
        gqa = 2 * rows * self.heads * context * self.head_dim * b if self.heads != self.kv_heads else 0
        mask = rows * new * context  # the 4-D boolean mask
        return mlp + gqa + mask

    def saved_for_backward(self, rows: int, tokens: int) -> int:
        """Activations a forward with gradients keeps until its backward (all layers)."""
        per_token = self.layers * (_SAVED_H * self.hidden + _SAVED_I * self.intermediate)
        return rows * tokens * per_token * self.bytes_per_value


def _replace(shape: ModelShape, **changes: Any) -> ModelShape:
    return ModelShape(**{**asdict(shape), **changes})


def _count_parameters(config: Any) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel()
    # tied embeddings are one tensor (same object), counted once above
    return total


@dataclass
class MemoryEstimate:
    """Bytes a request needs at its peak, by component. ``total`` is what to plan for."""

    strategy: str
    policy: str
    dtype: str
    rows: int
    tokens: int  # longest prompt + max_new_tokens: the KV cache's length
    weights: int = 0
    kv_cache: int = 0
    activations: int = 0
    logits: int = 0
    sea_tensors: int = 0
    optimizer_state: int = 0
    reward: int = 0
    peak_phase: str = ""  # the stage the components describe: the one holding the most at once
    notes: list[str] = field(default_factory=list)

    COMPONENTS = ("weights", "kv_cache", "activations", "logits", "sea_tensors", "optimizer_state", "reward")

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in self.COMPONENTS)

    @property
    def request(self) -> int:
        """Everything but the policy's weights: what one more request in flight adds."""
        return self.total - self.weights

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items()}
        out["total"] = self.total
        out["request"] = self.request
        return out

    def explain(self) -> str:
        """A small table in MiB, with the assumptions behind the largest terms."""
        lines = [
            f"{self.strategy} on {self.policy} ({self.dtype}): {self.rows} row(s) x {self.tokens} tokens, "
            f"peak at {self.peak_phase or 'decode'}",
        ]
        for name in self.COMPONENTS:
            value = getattr(self, name)
            if value:
                lines.append(f"  {name:<16}{value / MiB:>10.1f} MiB")
        lines.append(f"  {'total':<16}{self.total / MiB:>10.1f} MiB  (request without weights: "
                     f"{self.request / MiB:.1f} MiB)")  # fmt: skip
        lines.extend(f"  - {note}" for note in self.notes)
        return "\n".join(lines)


# -- resolving the inputs ---------------------------------------------------------------------
def policy_shape(policy: Any, dtype: str | torch.dtype | None = None) -> ModelShape:
    """A ModelShape from a Policy, a transformers model or config, or a spec (reads config.json only)."""
    if isinstance(policy, ModelShape):
        return policy
    model = getattr(policy, "model", None)
    if model is not None and hasattr(model, "config"):
        return ModelShape.of(model)
    if hasattr(policy, "parameters") and hasattr(policy, "config"):
        return ModelShape.of(policy)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = resolve_dtype(dtype, device)
    if isinstance(policy, str):
        return _replace(ModelShape.from_config(_config_of(policy), resolved), name=policy)
    if not hasattr(policy, "to_dict"):
        raise InvalidInputError(
            "estimate_memory needs a Policy, a transformers model or config, or a model spec; "
            f"got {policy!r}."
        )
    return ModelShape.from_config(policy, resolved)


def _config_of(spec: str) -> Any:
    from transformers import AutoConfig

    from align_chains.models.embedded import POLICY_ALIASES, converted_policy_dir
    from align_chains.models.hub import resolve_model_dir

    path = (
        converted_policy_dir() if spec.lower() in POLICY_ALIASES else resolve_model_dir(spec, what="policy")
    )
    return AutoConfig.from_pretrained(str(path))


@dataclass(frozen=True)
class RewardFootprint:
    """What a reward adds: its own weights and the shape of its model (None: no model)."""

    name: str
    weights: int = 0
    shape: ModelShape | None = None
    causal: bool = False  # a decoder it runs over prompt + response (classifier, judge, implicit)
    is_policy: bool = False  # the policy's own model: no extra weights
    batch_size: int = 8
    kind: str = "callable"


def reward_footprint(reward: Any, policy_model: Any = None) -> RewardFootprint:
    """Inspect a RewardModel (or None / a callable) for the memory it adds."""
    from align_chains.rewards import (
        ClassifierReward,
        EmbeddingReward,
        ImplicitReward,
        JudgeReward,
        WeightedReward,
    )

    if reward is None:
        return RewardFootprint(name="none")
    name = getattr(reward, "name", type(reward).__name__)
    if isinstance(reward, WeightedReward):
        parts = [reward_footprint(r, policy_model) for r, _ in reward.terms]
        causal = [p for p in parts if p.shape is not None and p.causal]
        largest = max(causal or parts, key=lambda p: p.weights + (p.shape.weight_bytes if p.shape else 0))
        return RewardFootprint(
            name=name,
            weights=sum(p.weights for p in parts),
            shape=largest.shape,
            causal=largest.causal,
            is_policy=largest.is_policy,
            batch_size=largest.batch_size,
            kind="weighted",
        )
    if isinstance(reward, JudgeReward):
        model = reward.judge.model
        same = model is policy_model
        shape = ModelShape.of(model)
        return RewardFootprint(
            name, 0 if same else shape.weight_bytes, shape, True, same, reward.batch_size, "judge"
        )
    if isinstance(reward, ImplicitReward):
        tuned, untuned = reward.tuned.model, reward.untuned.model
        extra = sum(ModelShape.of(m).weight_bytes for m in {id(tuned): tuned, id(untuned): untuned}.values()
                    if m is not policy_model)  # fmt: skip
        return RewardFootprint(name, extra, ModelShape.of(tuned), True, extra == 0, 8, "implicit")
    if isinstance(reward, ClassifierReward):
        shape = ModelShape.of(reward.model)
        return RewardFootprint(name, shape.weight_bytes, shape, True, False, reward.batch_size, "classifier")
    if isinstance(reward, EmbeddingReward):
        encoder = reward.encoder
        params = {
            t.data_ptr(): t.numel() * t.element_size() for t in [*encoder.parameters(), *encoder.buffers()]
        }
        return RewardFootprint(name, sum(params.values()), None, False, False, reward.batch_size, "embedding")
    return RewardFootprint(name=name)


# -- the estimate ----------------------------------------------------------------------------
def estimate_memory(
    strategy: Any,
    policy: Any,
    reward: Any = None,
    params: SamplingParams | None = None,
    prompt_tokens: int | Sequence[int] = 128,
    *,
    dtype: str | torch.dtype | None = None,
) -> MemoryEstimate:
    """Peak bytes of one ``strategy.run_batch`` call on ``policy`` with ``reward``.

    ``prompt_tokens`` is the rendered prompt length, or one length per prompt of a batch.
    ``policy`` is a Policy, a transformers model/config or a spec; ``dtype`` applies to a config
    or spec only (a loaded model has its own). ``reward`` is a RewardModel, or a
    ``RewardFootprint`` (what the CLI builds without loading weights), or None.
    """
    from align_chains.strategies import (
        SEA,
        AdaptiveBestOfN,
        BestOfN,
        Darwin,
        EarlyRejectionBestOfN,
        RewardGuided,
        Strategy,
        ValueGuided,
    )

    if not isinstance(strategy, Strategy):
        raise InvalidInputError(
            f"estimate_memory needs a Strategy instance (e.g. BestOfN(n=8)); got {strategy!r}."
        )
    lengths = [prompt_tokens] if isinstance(prompt_tokens, int) else list(prompt_tokens)
    if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
        raise InvalidInputError(
            f"prompt_tokens must be a positive int or a list of them; got {prompt_tokens!r}."
        )
    params = params or SamplingParams()
    shape = policy_shape(policy, dtype)
    policy_model = getattr(policy, "model", None)
    foot = reward if isinstance(reward, RewardFootprint) else reward_footprint(reward, policy_model)
    prompts, width, new = len(lengths), max(lengths), params.max_new_tokens
    b = shape.bytes_per_value

    est = MemoryEstimate(
        strategy=strategy.name,
        policy=shape.name,
        dtype=str(shape.dtype).removeprefix("torch."),
        rows=0,
        tokens=width + new,
        weights=shape.weight_bytes,
    )
    per_entry = b + _SAMPLING_BYTES + (_FILTER_BYTES if params.top_k > 0 or params.top_p < 1.0 else 0)

    def decoding(rows: int, distinct: int, length: int, new_tokens: int) -> list[Phase]:
        """The phases of ``Decoder.start`` + decoding: ``distinct`` prompts of ``length`` tokens
        prefilled, expanded to ``rows`` rows, ``new_tokens`` sampled on each."""
        kv, layer = shape.kv_bytes_per_token, shape.kv_bytes_per_token // max(shape.layers, 1)
        reserved = rows * (length + new_tokens) * kv  # the preallocated cache (kv_cache.py)
        return [
            # the prefill's DynamicCache grows to every prompt's keys while one layer's
            # activations are live; logits_to_keep=1 keeps one logits row per prompt
            Phase(
                "prefill",
                distinct * length * kv,
                shape.forward_bytes(distinct, length, length),
                distinct * shape.vocab * (b + 4),
            ),
            # expand_into_preallocated replaces the prefill's layers one by one: at the last
            # layer every reserved buffer, that layer's prefill keys and their row-indexed copy
            Phase(
                "cache expansion",
                reserved + distinct * length * layer,
                rows * length * layer,
                (distinct + rows) * shape.vocab * 4,
            ),
            # a decode step: one token per row over the whole cache, plus the sampler's copies
            # of the [rows, V] logits and the prompt logits every row keeps
            Phase(
                "decode",
                reserved,
                shape.forward_bytes(rows, 1, length + new_tokens),
                rows * shape.vocab * (per_entry + 4),
                scoring=True,
            ),
        ]

    # rows decoded side by side, and the phases of the request
    if isinstance(strategy, AdaptiveBestOfN):
        rows = prompts * strategy.budget  # stage 2 can give the whole budget's rows at once
        phases = decoding(rows, prompts, width, new)
    elif isinstance(strategy, (BestOfN, EarlyRejectionBestOfN)):
        rows = prompts * strategy.n  # early rejection starts as Best-of-n; rejection only drops rows
        phases = decoding(rows, prompts, width, new)
    elif isinstance(strategy, RewardGuided):
        rows = prompts
        phases = decoding(rows, prompts, width, new)
    elif isinstance(strategy, ValueGuided):
        rows = prompts * strategy.beams * strategy.samples
        # the guide views (the policy with and without the principle, or a tuned/untuned pair)
        # are more blocks of the same Lockstep batch: views x the rows, views x the prompts
        views = 2 if strategy.principle else (3 if strategy.token_guidance else 1)
        phases = decoding(rows * views, prompts * views, width, new)
        if views > 1:
            est.notes.append(f"IVG: {views} views decoded as one batch of {views} x the rows")
    elif isinstance(strategy, Darwin):
        rows = prompts * strategy.n
        phases = _darwin_phases(strategy, shape, decoding, prompts, width, new, per_entry)
        est.notes.append("DARWIN: mutated prompts taken as long as the original")
    elif isinstance(strategy, SEA):
        rows = prompts * strategy.chains
        phases = decoding(rows, prompts, width, new)
    else:
        rows = prompts * int(getattr(strategy, "n", 1) or 1)
        phases = decoding(rows, prompts, width, new)
        est.notes.append(f"{strategy.name}: a strategy without a memory model, counted as Best-of-n")
    est.rows = rows

    if isinstance(strategy, SEA):
        # the peak is an iteration's backward, on top of the decoded rows' cache
        decode = phases[-1]
        unit = rows * new * shape.vocab * 4  # one fp32 [rows, L, V] tensor
        phases.append(
            Phase(
                "SEA backward",
                decode.kv,
                max(decode.activations, shape.forward_bytes(rows, new, width + new)),
                decode.logits,
                scoring=True,
                sea_tensors=_SEA_STEP_TENSORS * unit + rows * new * shape.vocab * b,  # + the model's logits
                optimizer_state=_ADAM_TENSORS * unit,
            )
        )
        est.notes.append(
            f"SEA: {_SEA_STEP_TENSORS} fp32 [rows, L, V] tensors at the backward plus Adam's moments "
            f"and gradient ({unit / MiB:.1f} MiB each); the logit variable and Adam stay fp32 in any dtype"
        )

    # the reward's weights are held throughout; its scoring transient (and ARGS's / early
    # rejection's reward cache) only while the decoded rows are alive
    reward_weights, reward_transient = _reward_bytes(strategy, foot, rows, prompts, width, new)
    peak = max(phases, key=lambda ph: ph.total + (reward_transient if ph.scoring else 0))
    est.peak_phase = peak.name
    est.kv_cache, est.activations, est.logits = peak.kv, peak.activations, peak.logits
    est.sea_tensors, est.optimizer_state = peak.sea_tensors, peak.optimizer_state
    est.reward = reward_weights + (reward_transient if peak.scoring else 0)
    if foot.name != "none":
        est.notes.append(
            f"reward {foot.name}: {foot.kind}" + (" (the policy's own weights)" if foot.is_policy else "")
        )
    return est


@dataclass(frozen=True)
class Phase:
    """What one stage of a request holds at once on the policy's device (bytes)."""

    name: str
    kv: int
    activations: int
    logits: int
    scoring: bool = False  # the decoded rows are alive while the reward scores them
    sea_tensors: int = 0
    optimizer_state: int = 0

    @property
    def total(self) -> int:
        return self.kv + self.activations + self.logits + self.sea_tensors + self.optimizer_state


def mutation_request_tokens(n: int) -> int:
    """Tokens DARWIN's mutation request adds around the instruction (``mutation.mutation_request``):
    about 120 of fixed text and template, and one worked rewrite of about 20 per mutation asked,
    up to the 8 examples it shows (counted on SmolLM2's template: n=1 137, n=3 180, n=8 275)."""
    return 120 + 20 * min(n, 8)


def _darwin_phases(
    strategy: Any,
    shape: ModelShape,
    decoding: Callable[[int, int, int, int], list[Phase]],
    prompts: int,
    width: int,
    new: int,
    per_entry: int,
) -> list[Phase]:
    """DARWIN's stages: the first answers decoded beside the first mutation lists, the n
    candidates per prompt, and the state transplant of a replacement round."""
    n, k, m = strategy.n, strategy.k, strategy.m
    kv, layer = shape.kv_bytes_per_token, shape.kv_bytes_per_token // max(shape.layers, 1)
    # s0 and the mutation request share one batch (2 rows per prompt), padded to the request
    request = width + mutation_request_tokens(n)
    phases = decoding(2 * prompts, 2 * prompts, request, max(new, strategy.mutation_max_tokens))
    # candidates: n distinct prompts each; prefix_prefill reserves the whole cache first and then
    # prefills the differing suffixes into it (the worst case: nothing shared)
    rows = prompts * n
    reserved = rows * (width + new) * kv
    candidate = decoding(rows, rows, width, new)
    candidate[0] = Phase(
        "candidate prefill",
        reserved,
        shape.forward_bytes(rows, width, width),
        rows * shape.vocab * (shape.bytes_per_value + 4),
    )
    phases.extend(candidate)
    if new > m and n > k:
        # a replacement round (state_transplant._prefill_answers) on up to n - k rows per prompt:
        # building its DynamicCache from index copies of their prompt columns holds those copies
        # and the cache's own (torch.cat) copies at once; then a forward over the copied answer
        # (at most max_new_tokens - m tokens) grows that cache layer by layer
        moved, fed = prompts * (n - k), new - m
        build = 2 * moved * width * kv
        forward = moved * (width + fed) * kv + moved * (width + fed) * layer
        step = candidate[-1]
        if build >= forward + shape.forward_bytes(moved, fed, width + fed):
            extra, act = build, 0
        else:
            extra, act = forward, shape.forward_bytes(moved, fed, width + fed)
        phases.append(Phase("replacement", reserved + extra, act, step.logits))
    return phases


def _reward_bytes(
    strategy: Any, foot: RewardFootprint, rows: int, prompts: int, width: int, new: int
) -> tuple[int, int]:
    """(the reward's own weights, the largest thing it builds during the request)."""
    from align_chains.strategies import SEA, EarlyRejectionBestOfN, RewardGuided

    if foot.shape is None:
        return foot.weights, 0
    shape = foot.shape
    judge_overhead = 96  # the judge's question around prompt and response (see rewards/judge.py)
    text = width + new + judge_overhead
    batch = min(rows, foot.batch_size)
    # scoring text: one left-padded forward over prompt + response, logits of the last token
    scoring = shape.forward_bytes(batch, text, text) + batch * text * shape.kv_bytes_per_token
    if foot.kind == "implicit":  # full-sequence logits of both views
        scoring = 2 * rows * text * shape.vocab * shape.bytes_per_value + rows * new * shape.vocab * 4
    transient = scoring
    if isinstance(strategy, RewardGuided) and foot.kind == "classifier":
        # ClassifierBranchScorer: one preallocated cache row per prompt, room for k columns
        transient = max(transient, rows * (width + new + _ARGS_EXTRA_COLUMNS) * shape.kv_bytes_per_token)
    if isinstance(strategy, EarlyRejectionBestOfN) and foot.kind == "judge":
        # JudgePartialScorer: the judge's own cache for every row, answer and closing question
        transient = max(transient, rows * text * shape.kv_bytes_per_token)
    if isinstance(strategy, SEA) and foot.causal:
        # the soft scorer keeps the prefix cache; each call runs L + suffix soft tokens with grad
        soft = rows * text * shape.kv_bytes_per_token + shape.saved_for_backward(rows, new + 16)
        soft += 2 * rows * new * shape.vocab * shape.bytes_per_value  # probs cast to the reward's dtype
        transient = max(transient, soft)
    return foot.weights, transient


def footprint_from_spec(spec: str | None, policy: ModelShape) -> RewardFootprint:
    """A RewardFootprint from a reward spec, reading configs only (for ``align-chains estimate``)."""
    from pathlib import Path

    from align_chains.models.embedded import minilm_dir
    from align_chains.rewards.specs import EmbeddedSpec, JudgeSpec, ModelSpec, parse_reward_spec

    parsed = None if spec is None or spec in ("none", "callable") else parse_reward_spec(spec)
    if not isinstance(parsed, JudgeSpec | EmbeddedSpec | ModelSpec):  # a function or rule: no weights
        return RewardFootprint(name="none")
    if isinstance(parsed, JudgeSpec):
        if parsed.model is None:
            return RewardFootprint(spec, 0, policy, True, True, 8, "judge")
        shape = policy_shape(parsed.model, policy.dtype)
        return RewardFootprint(spec, shape.weight_bytes, shape, True, False, 8, "judge")
    if isinstance(parsed, EmbeddedSpec) or (Path(parsed.source) / "modules.json").is_file():
        from transformers import AutoConfig

        path = minilm_dir() if isinstance(parsed, EmbeddedSpec) else Path(parsed.source)
        config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            from transformers import AutoModel

            count = sum(p.numel() for p in AutoModel.from_config(config).parameters())
        return RewardFootprint(spec, count * 4, None, False, False, 32, "embedding")
    from transformers import AutoConfig

    from align_chains.models.hub import resolve_model_dir

    config = AutoConfig.from_pretrained(str(resolve_model_dir(parsed.source, what="reward model")))
    shape = ModelShape.from_config(config, policy.dtype, parameters=_count_classifier(config))
    return RewardFootprint(spec, shape.weight_bytes, shape, True, False, 8, "classifier")


def _count_classifier(config: Any) -> int:
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return sum(p.numel() for p in model.parameters())


# -- the device ------------------------------------------------------------------------------
def device_memory(device: Any) -> tuple[int, str]:
    """(bytes, a description) of the memory a model on ``device`` can use: a CUDA device's total
    memory, or on CPU the machine's physical memory, or its cgroup limit when that is lower
    (a container's)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        return total, f"cuda:{index}'s {total / 1024**3:.1f} GiB"
    import os
    from pathlib import Path

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    what = f"this machine's {total / 1024**3:.1f} GiB of RAM"
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < total:
            total, what = int(text), f"this container's {int(text) / 1024**3:.1f} GiB memory limit"
        break
    return total, what
