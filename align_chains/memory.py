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

The phases are the strategy's own declaration (``Strategy.memory``, see
``strategies/declarations.py``): the engine's prefill, cache expansion and decoding
(``engine/memory.py``) for the rows it decodes side by side, and per strategy SEA's backward and
DARWIN's first-answer/mutation batch, candidate prefill and state transplant; the reward's part
comes from its footprint (``rewards/footprint.py``). Counts come from reading those code paths
(documented next to each term) and were checked against measured peaks on CPU
(``benchmarks/memory_check.py``, table in ``docs/gpu.md``). The policy can be a loaded
``Policy``, a transformers config, or a model directory / id / embedded name (then only its
config is read: a dry run loads no weights). The server's admission control refuses a request
whose estimated peak is over its memory budget (``align-chains serve --max-request-memory``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from align_chains.engine.memory import MiB, ModelShape, Phase
from align_chains.engine.sampling import SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.rewards.footprint import RewardFootprint, reward_footprint
from align_chains.settings import resolve_dtype
from align_chains.strategies.base import Strategy
from align_chains.strategies.declarations import MemoryRequest

__all__ = [
    "MemoryEstimate",
    "ModelShape",
    "Phase",
    "RewardFootprint",
    "device_memory",
    "estimate_memory",
    "footprint_from_spec",
    "policy_shape",
    "reward_footprint",
]


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
        return replace(ModelShape.from_config(_config_of(policy), resolved), name=policy)
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
    ``RewardFootprint`` (what the CLI builds without loading weights), or None. The phases are
    the strategy's declaration (``Strategy.memory``); the peak is the one holding the most,
    the reward's scoring transient counted in the phases where the decoded rows are alive.
    """
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
    foot = reward
    if not isinstance(reward, RewardFootprint):
        foot = reward_footprint(reward, getattr(policy, "model", None))
    plan = strategy.memory(MemoryRequest(shape, tuple(lengths), params, foot))
    transient = plan.reward_transient
    peak = max(plan.phases, key=lambda ph: ph.total + (transient if ph.scoring else 0))
    notes = list(plan.notes)
    if foot.name != "none":
        own = " (the policy's own weights)" if foot.is_policy else ""
        notes.append(f"reward {foot.name}: {foot.kind}{own}")
    return MemoryEstimate(
        strategy=strategy.name,
        policy=shape.name,
        dtype=str(shape.dtype).removeprefix("torch."),
        rows=plan.rows,
        tokens=max(lengths) + params.max_new_tokens,
        weights=shape.weight_bytes,
        kv_cache=peak.kv,
        activations=peak.activations,
        logits=peak.logits,
        sea_tensors=peak.sea_tensors,
        optimizer_state=peak.optimizer_state,
        reward=foot.weights + (transient if peak.scoring else 0),  # its weights are held throughout
        peak_phase=peak.name,
        notes=notes,
    )


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
