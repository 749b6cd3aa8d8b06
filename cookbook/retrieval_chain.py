"""A retrieval chain: retriever -> prompt -> Best-of-N on SmolLM2 -> parser, all offline.

Run:  python cookbook/retrieval_chain.py

The documents are embedded with the embedded MiniLM (`MiniLMEmbeddings`) into LangChain's
`InMemoryVectorStore`. For each question the script prints the retrieved documents, the answer,
and what the chat model's compute counters say: the retrieved context, the long part of the
prompt, was prefilled once for all n candidates.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from align_chains import BestOfNChatModel, MiniLMEmbeddings

N = 4
DOCUMENTS = [
    Document(
        id="vasa",
        page_content="The Vasa was a Swedish warship built for King Gustavus Adolphus. She sank in "
        "Stockholm harbour on her maiden voyage on 10 August 1628, less than a mile from the "
        "shipyard, because she was top-heavy. The wreck was raised in 1961 and is now shown in "
        "the Vasa Museum in Stockholm.",
    ),
    Document(
        id="bees",
        page_content="Honey bee foragers tell their hive mates where food is with the waggle dance. "
        "The angle of the waggle run to the vertical gives the direction of the flowers relative "
        "to the sun, and the length of the run tells how far away they are.",
    ),
    Document(
        id="seed-vault",
        page_content="The Svalbard Global Seed Vault is built into a mountain on Spitsbergen, "
        "Norway, 1,300 kilometres from the North Pole. Opened in 2008, it stores duplicate "
        "samples of seeds from gene banks around the world, kept at minus 18 degrees Celsius.",
    ),
    Document(
        id="rosetta",
        page_content="The Rosetta Stone carries one decree from 196 BC in three scripts: "
        "hieroglyphic, Demotic and ancient Greek. Found in 1799 near the town of Rashid in "
        "Egypt, it let Champollion decipher hieroglyphs in 1822. It is in the British Museum.",
    ),
    Document(
        id="sourdough",
        page_content="Sourdough bread is leavened by a starter, a culture of wild yeast and lactic "
        "acid bacteria kept alive in flour and water. The bacteria make the acids that give the "
        "bread its sour taste, and the yeast makes the gas that raises the dough.",
    ),
]


class ComputeLog(BaseCallbackHandler):
    """Collects, per question, what the retriever found and the chat model's reply, inside any chain."""

    def __init__(self) -> None:
        self.queries: dict[Any, str] = {}
        self.questions: dict[Any, str] = {}
        self.retrieved: dict[str, list[str]] = {}
        self.replies: dict[str, Any] = {}

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: Any, **kwargs: Any) -> None:
        self.queries[run_id] = query

    def on_retriever_end(self, documents: Any, *, run_id: Any, **kwargs: Any) -> None:
        self.retrieved[self.queries[run_id]] = [doc.id for doc in documents]

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any, **kwargs: Any) -> None:
        self.questions[run_id] = messages[0][-1].content  # the human turn is the question

    def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
        self.replies[self.questions[run_id]] = response.generations[0][0].message


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content for doc in docs)


def report(reply: Any) -> None:
    compute = reply.response_metadata["compute"]
    prompt, batch = compute["prompt_tokens"], compute["batch_size"]
    print(
        f"   prompt: {prompt} tokens, prefilled once for {N} candidates "
        f"(separate calls would prefill {N} x {prompt} = {N * prompt})"
    )
    print(
        f"   generated {compute['generated_tokens']} tokens over {N} candidates; "
        f"{compute['forward_passes']} forward passes, {compute['seconds']:.1f} s"
        + (f", shared by a batch of {batch}" if batch > 1 else "")
    )


def build_chain(model: BestOfNChatModel) -> Runnable[str, str]:
    """retriever -> prompt -> ``model`` -> parser: the context is the two documents nearest the question."""
    retriever = InMemoryVectorStore.from_documents(DOCUMENTS, MiniLMEmbeddings()).as_retriever(
        search_kwargs={"k": 2}
    )
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer the question in one sentence, using only this context:\n\n{context}"),
            ("human", "{question}"),
        ]
    )
    return (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | model
        | StrOutputParser()
    )


def main() -> None:
    chain = build_chain(BestOfNChatModel(n=N, max_tokens=32, seed=0))

    log = ComputeLog()
    question = "When did the Vasa sink?"
    answer = chain.invoke(question, config={"callbacks": [log]})
    print(f"## {question}\n   retrieved: {log.retrieved[question]}\n   answer: {answer!r}")
    report(log.replies[question])

    # batch(): the chat model runs all questions in one Best-of-N run (one prefill, shared steps)
    log = ComputeLog()
    questions = ["How do honey bees show each other where flowers are?", "Where is the Svalbard seed vault?"]
    answers = chain.batch(questions, config={"callbacks": [log]})
    for q, a in zip(questions, answers, strict=True):
        print(f"\n## {q}\n   retrieved: {log.retrieved[q]}\n   answer: {a!r}")
        report(log.replies[q])


if __name__ == "__main__":
    main()
