"""A policy served by llama.cpp: a GGUF file decoded through llama-cpp-python's batch API.

On a CPU, llama.cpp reads 4-bit GGUF weights with hand-written kernels, and decoding n
sequences as one batch after one shared prefill beats our fp32/bf16 engine at sampling
(docs/benchmarks.md, "llama.cpp on the same GGUF"). ``load_llama_cpp_policy`` loads such a
policy for the strategies that only sample (Best-of-N, adaptive Best-of-N); the strategies that
read or steer the policy's logits step by step, edit its KV cache or need gradients refuse it
with a clear error and keep the transformers engine (``load_policy``).

The prompt is rendered with the GGUF's own tokenizer and chat template (read by transformers),
so a llama.cpp policy and ``load_policy`` on the same file render the same token ids. One
llama.cpp context per policy holds every sequence of a request in one unified KV cache:
``n_ctx`` cells shared by the prompts (each stored once) and all rows' answers. Needs the
optional ``llama`` extra (``pip install 'align-chains[llama]'``, which builds llama-cpp-python).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from align_chains.errors import InvalidInputError, ModelLoadError
from align_chains.models.embedded import POLICY_ALIASES, cache_problem, converted_policy_path, gguf_path
from align_chains.models.policy import Policy

LLAMA_EXTRA = "pip install 'align-chains[llama]' (or pip install llama-cpp-python; it builds llama.cpp)"


def import_llama_cpp() -> Any:
    """llama-cpp-python's module, or a ModelLoadError saying how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(f"A llama.cpp policy needs llama-cpp-python: {LLAMA_EXTRA}.") from exc
    return llama_cpp


class LlamaCppModel:
    """A GGUF model and one llama.cpp context: ``n_ctx`` KV cells in one unified cache shared by
    up to ``max_sequences`` sequences, ``threads`` CPU threads."""

    def __init__(self, path: Path, n_ctx: int, max_sequences: int, threads: int) -> None:
        lc = import_llama_cpp()
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp logs every load and decode to stderr otherwise
        lc.llama_backend_init()
        self.lc, self.path, self.threads = lc, path, threads
        self.model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {path} (not a GGUF model it supports).")
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_ctx, min(n_ctx, 512)
        params.n_seq_max, params.kv_unified = max_sequences, True
        params.n_threads, params.n_threads_batch = threads, threads
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise ModelLoadError(f"llama.cpp could not create a context of {n_ctx} cells for {path}.")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.n_ctx, self.max_sequences = int(lc.llama_n_ctx(self.ctx)), max_sequences
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(self.n_ctx, 0, max_sequences)

    def __del__(self) -> None:
        lc = getattr(self, "lc", None)
        if lc is None:
            return
        if getattr(self, "batch", None) is not None:
            lc.llama_batch_free(self.batch)
        if getattr(self, "ctx", None):
            lc.llama_free(self.ctx)
        if getattr(self, "model", None):
            lc.llama_model_free(self.model)

    def eog_tokens(self) -> set[int]:
        """The end-of-generation tokens llama.cpp knows for this vocabulary (EOS, EOT)."""
        lc = self.lc
        found = {int(lc.llama_vocab_eos(self.vocab)), int(lc.llama_vocab_eot(self.vocab))}
        return {t for t in found if t >= 0}

    def decode(self, entries: list[tuple[int, int, list[int], bool]]) -> torch.Tensor:
        """One ``llama_decode`` over ``(token, position, sequence ids, wants logits)`` entries;
        returns the logits ``[outputs, vocab]`` of the entries that asked, in their order."""
        batch = self.batch
        for i, (token, pos, seqs, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, len(seqs), logits
            for j, seq in enumerate(seqs):
                batch.seq_id[i][j] = seq
        batch.n_tokens = len(entries)
        status = self.lc.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} ({len(entries)} tokens)")
        outputs = sum(1 for entry in entries if entry[3])
        pointer = self.lc.llama_get_logits(self.ctx)
        floats = ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float))
        values = np.ctypeslib.as_array(floats, (outputs, self.n_vocab))
        return torch.from_numpy(values.copy())

    def clear(self) -> None:
        """Empty the KV cache (every sequence)."""
        self.lc.llama_memory_clear(self.memory, True)

    def keep(self, seq: int, length: int) -> None:
        """Drop sequence ``seq``'s cells from position ``length`` on (all of them at 0)."""
        self.lc.llama_memory_seq_rm(self.memory, seq, length if length > 0 else -1, -1)

    def copy(self, source: int, target: int) -> None:
        """Sequence ``target`` shares all of ``source``'s cells (no copy in a unified cache)."""
        self.lc.llama_memory_seq_cp(self.memory, source, target, -1, -1)


@dataclass(eq=False)
class LlamaCppPolicy(Policy):
    """A policy whose forward passes run in llama.cpp (``model`` is a ``LlamaCppModel``); its
    tokenizer and chat template come from the GGUF, read by transformers.

    Only the sampling strategies run on it (Best-of-N, adaptive Best-of-N); build one with
    ``load_llama_cpp_policy``.
    """

    runs_in_llama_cpp: ClassVar[bool] = True  # strategies that need more than sampling refuse it

    def __post_init__(self) -> None:
        if self.chat_template is None:
            self.chat_template = getattr(self.tokenizer, "chat_template", None)
        if self.chat_template is None:
            raise ModelLoadError(
                f"Policy {self.name!r} has no chat template: pass chat_template=... to load_llama_cpp_policy."
            )

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # the logits come back to CPU tensors

    @property
    def vocab_size(self) -> int:
        return self.model.n_vocab

    @property
    def context_length(self) -> int:
        return self.model.n_ctx

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = set(self.model.eog_tokens())
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return tuple(sorted(ids))

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.eos_token_ids[0]


def load_llama_cpp_policy(
    spec: str | Path = "smollm2-135m-instruct",
    *,
    n_ctx: int = 4096,
    max_sequences: int = 128,
    threads: int | None = None,
    chat_template: str | None = None,
) -> LlamaCppPolicy:
    """Load a GGUF file as a llama.cpp policy for the sampling strategies (Best-of-N, adaptive).

    Args:
        spec: A ``.gguf`` file, or ``"smollm2-135m-instruct"`` (the embedded default: the very
            GGUF ``load_policy`` converts).
        n_ctx: KV cells of the one context, shared by a request's prompts (each once) and all its
            answers: a request needs the sum of its distinct prompts' tokens plus rows times
            ``max_new_tokens``.
        max_sequences: Rows a request may decode at once.
        threads: CPU threads (default: torch's, i.e. ``OMP_NUM_THREADS`` when set).
        chat_template: A Jinja chat template for a GGUF whose metadata has none.

    Returns:
        The ``LlamaCppPolicy`` (refused by every strategy but Best-of-N and adaptive Best-of-N).

    Examples:
        >>> from align_chains import BestOfN, load_llama_cpp_policy, load_reward
        >>> policy = load_llama_cpp_policy()  # doctest: +SKIP
        >>> BestOfN(n=8).run("Tips for better sleep?", policy, load_reward()).text  # doctest: +SKIP
    """
    if n_ctx < 16 or max_sequences < 1:
        raise InvalidInputError(
            f"n_ctx must be at least 16 and max_sequences at least 1 (got {n_ctx}, {max_sequences})."
        )
    path = gguf_path() if str(spec).lower() in POLICY_ALIASES else Path(spec).expanduser()
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise InvalidInputError(
            f"A llama.cpp policy is a .gguf file or 'smollm2-135m-instruct'; {str(spec)!r} is not "
            "(a Hugging Face model id or directory: use load_policy)."
        )
    model = LlamaCppModel(path, n_ctx, max_sequences, threads or torch.get_num_threads())
    from transformers import AutoTokenizer

    try:
        converted = converted_policy_path() if path == gguf_path() else None
        if converted is not None and cache_problem(converted) is None:  # the same tokenizer, read faster
            tokenizer = AutoTokenizer.from_pretrained(str(converted))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot read the tokenizer of {path}: {exc}") from exc
    name = f"llama.cpp:{path.name}"
    return LlamaCppPolicy(model=model, tokenizer=tokenizer, name=name, chat_template=chat_template)
