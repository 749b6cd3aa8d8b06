"""MiniLMEmbeddings: LangChain embeddings on the embedded all-MiniLM-L6-v2 (loads the real model, ~90 MB)."""

from __future__ import annotations

import math

import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

from align_chains import InvalidInputError, MiniLMEmbeddings, load_reward

TEXTS = [
    "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough.",
    "A starter of flour and water, fed daily, keeps the wild yeast for the next loaf.",
    "The offside rule in football stops attackers from waiting behind the defenders.",
]


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def embeddings() -> MiniLMEmbeddings:
    return MiniLMEmbeddings(device="cpu", batch_size=2)


def test_is_a_langchain_embeddings_and_loads_lazily():
    lazy = MiniLMEmbeddings()
    assert isinstance(lazy, Embeddings)
    assert lazy._encoder is None  # construction loads nothing


def test_dimensions_and_unit_length(embeddings):
    vectors = embeddings.embed_documents(TEXTS)
    assert embeddings.dimensions == 384
    assert len(vectors) == len(TEXTS)
    for v in vectors:
        assert len(v) == 384 and all(isinstance(x, float) for x in v)
        assert math.sqrt(_cos(v, v)) == pytest.approx(1.0, abs=1e-5)
    query = embeddings.embed_query("How does sourdough rise?")
    assert len(query) == 384 and math.sqrt(_cos(query, query)) == pytest.approx(1.0, abs=1e-5)


def test_batched_equals_one_at_a_time(embeddings):
    # batch_size=2 splits the three texts over two padded batches
    batched = embeddings.embed_documents(TEXTS)
    for text, vector in zip(TEXTS, batched, strict=True):
        assert embeddings.embed_query(text) == pytest.approx(vector, abs=1e-5)


def test_similar_texts_are_closer_than_unrelated_ones(embeddings):
    bread, starter, football = embeddings.embed_documents(TEXTS)
    assert _cos(bread, starter) > _cos(bread, football) + 0.2
    query = embeddings.embed_query("What makes sourdough rise?")
    assert _cos(query, bread) > _cos(query, football)


def test_shares_the_minilm_reward_encoder(embeddings):
    # one MiniLM in memory for a chain that retrieves and scores with it
    assert embeddings.encoder is load_reward("minilm", device="cpu").encoder


def test_retrieval_through_an_in_memory_vector_store(embeddings):
    store = InMemoryVectorStore.from_texts(TEXTS, embeddings)
    (doc,) = store.similarity_search("Why do offside rules exist in soccer?", k=1)
    assert doc.page_content == TEXTS[2]


def test_empty_list_embeds_to_nothing(embeddings):
    assert embeddings.embed_documents([]) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"model": " "}, "model is empty"),
        ({"model": 42}, "SentenceTransformer"),
    ],
)
def test_bad_settings_are_rejected_at_construction(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        MiniLMEmbeddings(**kwargs)


def test_device_with_a_loaded_model_is_rejected(embeddings):
    with pytest.raises(InvalidInputError, match="device"):
        MiniLMEmbeddings(embeddings.encoder, device="cpu")


def test_a_loaded_model_is_used_as_is(embeddings):
    shared = MiniLMEmbeddings(embeddings.encoder)
    assert shared.encoder is embeddings.encoder
    assert shared.embed_query(TEXTS[0]) == pytest.approx(embeddings.embed_query(TEXTS[0]), abs=1e-6)


def test_bad_texts_are_named(embeddings):
    with pytest.raises(InvalidInputError, match="embed_query"):
        embeddings.embed_documents("one string")
    with pytest.raises(InvalidInputError, match="Text 1"):
        embeddings.embed_documents(["fine", None])
    with pytest.raises(InvalidInputError, match="string"):
        embeddings.embed_query(["not", "a", "string"])
