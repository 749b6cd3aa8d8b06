"""LangChain embeddings on the embedded MiniLM, for vector stores and retrievers, offline.

The encoder is the one the MiniLM reward uses (``rewards.embedding.load_encoder``, cached per
model and device), so a retrieval chain whose chat model scores with ``reward="minilm"`` keeps
one copy of MiniLM in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from langchain_core.embeddings import Embeddings

from align_chains.errors import InvalidInputError
from align_chains.models.embedded import EMBEDDED_REWARD
from align_chains.rewards.embedding import load_encoder


class MiniLMEmbeddings(Embeddings):
    """Unit-length sentence embeddings (384 dimensions for all-MiniLM-L6-v2).

    ``model`` is ``"minilm"`` (the embedded all-MiniLM-L6-v2, the default), another
    sentence-transformers model as a local directory or Hub id, or a loaded
    ``SentenceTransformer``. It loads on first use. Texts are encoded ``batch_size`` at a time;
    MiniLM reads at most 256 word pieces of a text and ignores the rest, so split long documents
    into chunks before indexing them.

    Args:
        model: ``"minilm"`` (default), a sentence-transformers directory or Hub id, or a loaded
            ``SentenceTransformer``.
        device: ``"cpu"``, ``"cuda"``, ... for a model spec (automatic when None).
        batch_size: Texts per encoder call (default 32).

    Examples:
        >>> from langchain_core.vectorstores import InMemoryVectorStore
        >>> from align_chains import MiniLMEmbeddings
        >>> store = InMemoryVectorStore.from_texts(["..."], MiniLMEmbeddings())  # doctest: +SKIP
        >>> len(MiniLMEmbeddings().embed_query("Where is the seed vault?"))  # doctest: +SKIP
        384
    """

    def __init__(
        self,
        model: str | Any = EMBEDDED_REWARD,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> None:
        if isinstance(model, str) and not model.strip():
            raise InvalidInputError("model is empty: pass 'minilm', a model directory or a Hub id.")
        if not isinstance(model, str) and not callable(getattr(model, "encode", None)):
            raise InvalidInputError(
                "model must be a model spec string or a loaded SentenceTransformer; "
                f"got {type(model).__name__}."
            )
        if not isinstance(model, str) and device is not None:
            raise InvalidInputError(
                "device= applies to a model spec; move a loaded model with model.to(device)."
            )
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1; got {batch_size}.")
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._encoder: Any = None if isinstance(model, str) else model
        self._lock = threading.Lock()

    @property
    def encoder(self) -> Any:
        """The SentenceTransformer, loaded (once, thread-safely) on first access."""
        with self._lock:
            if self._encoder is None:
                self._encoder = load_encoder(self.model, self.device)
            return self._encoder

    @property
    def dimensions(self) -> int:
        """Length of every vector this returns."""
        return int(self.encoder.get_embedding_dimension())

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts in batches of ``batch_size``; one unit vector per text, in order."""
        texts = _checked(texts)
        if not texts:
            return []
        vectors = self.encoder.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.astype("float32").tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (MiniLM embeds queries and documents alike)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"embed_query takes a string; got {type(text).__name__}.")
        return self.embed_documents([text])[0]


def _checked(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InvalidInputError("embed_documents takes a list of texts; for one text use embed_query().")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"Text {i} is a {type(text).__name__}, not a string.")
    return texts
