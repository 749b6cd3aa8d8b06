"""What the decoding engine holds in memory: a model's shape and the phases of a decode.

``ModelShape`` is the handful of sizes memory depends on (read from a loaded model or a config,
no weights needed). ``decoding_phases`` walks what ``Decoder.start`` and decoding hold at once:
the prefill (each distinct prompt once), the expansion into the preallocated cache
(``kv_cache.py`` replaces the prefill's layers one by one, so the two caches never exist whole
at once) and a decode step. Strategies build their memory plans from these
(``Strategy.memory``), and ``align_chains.memory.estimate_memory`` takes the peak.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

MiB = 1024**2

# A decode step holds the model's logits [rows, V] (model dtype), their fp32 copy kept as
# ``next_logits``, the sampler's temperature-scaled copy and softmax (fp32), its fp64 CDF,
# and ``append``'s log-softmax (fp32): 4 + 4 + 4 + 8 + 4 bytes per entry beyond the model's own.
SAMPLING_BYTES = 24
# top-k / top-p filtering adds a masked copy, sorted values (fp32) and their order (int64).
FILTER_BYTES = 16
# Per layer and token, the tensors a Llama-style block saves for backward, in units of
# hidden (h) and intermediate (i) sizes: norms, q/k/v/o, residuals (~7h), MLP gate/up/act/product (4i).
_SAVED_H, _SAVED_I = 7, 4


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

    @property
    def kv_bytes_per_layer_token(self) -> int:
        """Keys and values of one token in one row, one layer."""
        return self.kv_bytes_per_token // max(self.layers, 1)

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
        return replace(shape, parameters=count // torch.empty((), dtype=dtype).element_size())

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


def logit_bytes_per_entry(shape: ModelShape, top_k: int, top_p: float) -> int:
    """Bytes a decode step holds per ``[rows, V]`` logit entry: the model's own and the sampler's copies."""
    filtering = FILTER_BYTES if top_k > 0 or top_p < 1.0 else 0
    return shape.bytes_per_value + SAMPLING_BYTES + filtering


def decoding_phases(
    shape: ModelShape, per_entry: int, rows: int, distinct: int, length: int, new_tokens: int
) -> list[Phase]:
    """The phases of ``Decoder.start`` + decoding: ``distinct`` prompts of ``length`` tokens
    prefilled, expanded to ``rows`` rows, ``new_tokens`` sampled on each (``per_entry``: the
    bytes per logit entry of a step, ``logit_bytes_per_entry``)."""
    kv, layer = shape.kv_bytes_per_token, shape.kv_bytes_per_layer_token
    reserved = rows * (length + new_tokens) * kv  # the preallocated cache (kv_cache.py)
    return [
        # the prefill's DynamicCache grows to every prompt's keys while one layer's
        # activations are live; logits_to_keep=1 keeps one logits row per prompt
        Phase(
            "prefill",
            distinct * length * kv,
            shape.forward_bytes(distinct, length, length),
            distinct * shape.vocab * (shape.bytes_per_value + 4),
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
