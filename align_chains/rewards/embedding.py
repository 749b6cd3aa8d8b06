"""Embedding rewards on sentence-transformers: relevance, principles and exemplars."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation, as_conversation, last_user_text
from align_chains.models.embedded import EMBEDDED_REWARD, REWARD_ALIASES, minilm_dir
from align_chains.rewards.base import Prompt, RewardModel
from align_chains.rewards.soft import SoftScorer
from align_chains.rewards.vocab_bridge import VocabularyBridge, vocabulary_bridge
from align_chains.settings import resolve_device

_ENCODERS: weakref.WeakValueDictionary[tuple[str, str], Any] = weakref.WeakValueDictionary()
_ENCODERS_LOCK = threading.Lock()


def load_encoder(spec: str = EMBEDDED_REWARD, device: str | torch.device | None = None) -> Any:
    """A SentenceTransformer from the embedded MiniLM, a local directory or a Hub id (cached)."""
    from sentence_transformers import SentenceTransformer

    from align_chains.models.hub import resolve_model_dir

    resolved = resolve_device(device)
    embedded = spec.lower() in REWARD_ALIASES
    key = (EMBEDDED_REWARD if embedded else spec, str(resolved))
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            path = minilm_dir() if embedded else resolve_model_dir(spec, what="embedding model")
            encoder = SentenceTransformer(str(path), device=str(resolved))
            _ENCODERS[key] = encoder
        return encoder


class EmbeddingReward(RewardModel):
    """Cosine-similarity reward from a sentence embedding model.

    score = relevance_weight * cos(prompt, response)
          + principle_weight * cos(principle, response)            (if a principle is given)
          + exemplar_weight * (mean cos(positive, response) - mean cos(negative, response))

    The prompt is the last user message. Principle and exemplar embeddings are computed once.

    Args:
        model: A sentence-transformers id or directory, ``"minilm"`` (the embedded
            all-MiniLM-L6-v2, the default), or a loaded ``SentenceTransformer``.
        principle: A sentence describing a good answer; adds the principle term.
        positive: Exemplar texts of good answers (the exemplar term pulls toward them).
        negative: Exemplar texts of bad answers (the exemplar term pushes away from them).
        relevance_weight: Weight of cos(prompt, response) (default 1).
        principle_weight: Weight of cos(principle, response) (default 1).
        exemplar_weight: Weight of the exemplar term (default 1).
        batch_size: Texts per encoder call (default 32).
        device: ``"cpu"``, ``"cuda"``, ... (automatic when None).

    Examples:
        >>> from align_chains import EmbeddingReward
        >>> kind = EmbeddingReward(principle="Answers are practical and kind.")
        >>> kind.score(["How do I say no?"], ["Thank them, then say no plainly."])  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any = EMBEDDED_REWARD,
        *,
        principle: str | None = None,
        positive: Sequence[str] = (),
        negative: Sequence[str] = (),
        relevance_weight: float = 1.0,
        principle_weight: float = 1.0,
        exemplar_weight: float = 1.0,
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ) -> None:
        if isinstance(positive, str) or isinstance(negative, str):
            raise InvalidInputError("positive and negative take lists of exemplar texts, not a string.")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1; got {batch_size}.")
        if principle is not None and not principle.strip():
            raise InvalidInputError("principle is empty: pass a sentence or leave it as None.")
        self.encoder = load_encoder(model, device) if isinstance(model, str) else model
        self.principle = principle
        self.positive = list(positive)
        self.negative = list(negative)
        self.relevance_weight = relevance_weight
        self.principle_weight = principle_weight
        self.exemplar_weight = exemplar_weight
        self.batch_size = batch_size
        label = model if isinstance(model, str) else type(model).__name__
        self.name = f"embedding:{label}"
        self._fixed: dict[str, torch.Tensor] = {}

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return (
            self.encoder.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            .float()
            .clone()
        )  # a normal tensor: encode() runs in inference mode, soft scoring needs autograd

    def _fixed_embedding(self, key: str, texts: list[str]) -> torch.Tensor:
        if key not in self._fixed:
            self._fixed[key] = self._embed(texts)
        return self._fixed[key]

    def _combine(self, query_vecs: torch.Tensor, response_vecs: torch.Tensor) -> torch.Tensor:
        score = self.relevance_weight * (query_vecs * response_vecs).sum(-1)
        if self.principle:
            principle = self._fixed_embedding("principle", [self.principle])
            score = score + self.principle_weight * (response_vecs @ principle.T)[:, 0]
        if self.positive:
            pos = self._fixed_embedding("positive", self.positive)
            score = score + self.exemplar_weight * (response_vecs @ pos.T).mean(-1)
        if self.negative:
            neg = self._fixed_embedding("negative", self.negative)
            score = score - self.exemplar_weight * (response_vecs @ neg.T).mean(-1)
        return score

    def soft_scorer(self, prompts: Sequence[Prompt], rows: Sequence[int], policy: Any) -> SoftScorer:
        """Score relaxed responses through the encoder's embeddings, via the vocabulary bridge."""
        modules = list(self.encoder)
        transformer = modules[0] if modules else None
        pooling = modules[1] if len(modules) > 1 else None
        mean_pooling = getattr(pooling, "pooling_mode", None) == "mean" or getattr(
            pooling, "pooling_mode_mean_tokens", False
        )
        tokenizer = getattr(self.encoder, "tokenizer", None)
        if not hasattr(transformer, "auto_model") or tokenizer is None or not mean_pooling:
            raise InvalidInputError(
                f"Reward {self.name!r}: soft scoring needs a sentence-transformers model made of a "
                "Transformer and mean pooling (like all-MiniLM-L6-v2)."
            )
        queries = [last_user_text(as_conversation(p)) for p in prompts]
        index = torch.as_tensor(list(rows), dtype=torch.long)
        vecs = self._embed(queries)
        query_vecs = vecs[index.to(vecs.device)]
        bridge = vocabulary_bridge(policy.tokenizer, tokenizer)
        return _EmbeddingSoftScorer(self, transformer, tokenizer, bridge, query_vecs)

    def _score(self, prompts: list[Conversation], responses: list[str]) -> Sequence[float]:
        queries = [last_user_text(p) for p in prompts]
        # Distinct queries and the responses go in separate encoder calls: a batch is padded to
        # its longest text, and a long prompt (a retrieved document, say) would pad every short
        # response to its length.
        slot = {q: i for i, q in enumerate(dict.fromkeys(queries))}
        query_vecs = self._embed(list(slot))[[slot[q] for q in queries]]
        return self._combine(query_vecs, self._embed(responses)).tolist()


class _EmbeddingSoftScorer(SoftScorer):
    """[CLS] + expected word embeddings of the relaxed response + [SEP], mean-pooled and normalised."""

    def __init__(
        self,
        reward: EmbeddingReward,
        transformer: Any,
        tokenizer: Any,
        bridge: VocabularyBridge,
        query_vecs: torch.Tensor,
    ) -> None:
        self.reward = reward
        self.model = transformer.auto_model
        self.bridge = bridge
        self.coverage = bridge.coverage
        self.exact = bridge.exact
        self.query_vecs = query_vecs
        self._cls = tokenizer.cls_token_id
        self._sep = tokenizer.sep_token_id
        self._limit = int(getattr(transformer, "max_seq_length", None) or 512)

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        rows, length = probs.shape[0], probs.shape[1]
        if length + 2 > self._limit:
            raise InvalidInputError(
                f"The response length {length} exceeds the embedding model's limit of "
                f"{self._limit - 2} tokens; lower max_tokens."
            )
        weight = self.model.get_input_embeddings().weight
        parts = [self.bridge.embed(probs, weight)]
        if self._cls is not None:
            parts.insert(0, weight[self._cls].expand(rows, 1, -1))
        if self._sep is not None:
            parts.append(weight[self._sep].expand(rows, 1, -1))
        inputs = torch.cat(parts, dim=1)
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        hidden = self.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        pooled = torch.nn.functional.normalize(hidden.float().mean(dim=1), dim=-1)
        return self.reward._combine(self.query_vecs.to(pooled.device), pooled)
