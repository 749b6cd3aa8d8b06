"""A retrieval chain end to end: retriever -> prompt -> Best-of-N on SmolLM2 -> parser.

The retrieved documents are the long part of every prompt. Best-of-N prefills that prompt once
and decodes all n candidates from copies of its KV cache, so the context costs its tokens once,
not n times. The test checks that in the compute counters and, independently, by watching the
calls into the policy's model.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from align_chains import BestOfNChatModel, MiniLMEmbeddings, load_policy
from align_chains.chat_models.messages import to_conversation
from align_chains.models import EMBEDDED_POLICY

pytestmark = pytest.mark.e2e

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
QUESTIONS = {
    "When did the Vasa sink?": "vasa",
    "How do honey bees show each other where flowers are?": "bees",
    "Where is the Svalbard seed vault?": "seed-vault",
}


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content for doc in docs)


class Recorder(BaseCallbackHandler):
    """Keeps the retrieved documents, the messages the model saw and the messages it returned."""

    def __init__(self) -> None:
        self.retrieved: list[list[Document]] = []
        self.prompts: dict[Any, list] = {}
        self.replies: dict[Any, Any] = {}

    def on_retriever_end(self, documents, **kwargs: Any) -> None:
        self.retrieved.append(list(documents))

    def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs: Any) -> None:
        (self.prompts[run_id],) = messages

    def on_llm_end(self, response, *, run_id, **kwargs: Any) -> None:
        self.replies[run_id] = response.generations[0][0].message

    def calls(self) -> list[tuple[list, Any]]:
        """(messages in, AIMessage out) per model call."""
        return [(self.prompts[run], self.replies[run]) for run in self.replies]


class ModelCalls:
    """Records the shape and real (unpadded) token count of every forward call into a model."""

    def __init__(self, model: Any) -> None:
        self.calls: list[tuple[tuple[int, int], int]] = []
        self._handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        self.calls.append((tuple(ids.shape), int(mask[:, -ids.shape[1] :].sum())))

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture(scope="module")
def policy():
    return load_policy(EMBEDDED_POLICY)


@pytest.fixture(scope="module")
def chain(policy):
    retriever = InMemoryVectorStore.from_documents(DOCUMENTS, MiniLMEmbeddings()).as_retriever(
        search_kwargs={"k": 2}
    )
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer the question in one sentence, using only this context:\n\n{context}"),
            ("human", "{question}"),
        ]
    )
    model = BestOfNChatModel(policy=policy, n=N, max_tokens=24, seed=0)
    return (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | model
        | StrOutputParser()
    )


@pytest.fixture
def model_calls(policy):
    calls = ModelCalls(policy.model)
    yield calls
    calls.close()


def test_retrieval_chain_prefills_the_context_once_for_all_candidates(chain, policy, model_calls):
    question = "When did the Vasa sink?"
    recorder = Recorder()
    answer = chain.invoke(question, config={"callbacks": [recorder]})

    assert isinstance(answer, str) and answer.strip()
    (retrieved,) = recorder.retrieved
    assert retrieved[0].id == "vasa"
    ((messages, reply),) = recorder.calls()
    assert answer == reply.content
    assert "10 August 1628" in messages[0].content  # the retrieved fact is in the prompt
    assert messages[-1].content == question

    prompt_length = len(policy.render(to_conversation(messages)))
    assert prompt_length > 100  # the context makes the prompt long; the question alone is ~10 tokens
    compute = reply.response_metadata["compute"]
    assert compute["prompt_tokens"] == reply.usage_metadata["input_tokens"] == prompt_length

    # what actually ran through the model: ONE prefill of ONE row, then decode steps of N rows
    prefills = [call for call in model_calls.calls if call[0][1] > 1]
    assert prefills == [((1, prompt_length), prompt_length)]  # not N rows, not N times
    steps = [shape for shape, _ in model_calls.calls if shape[1] == 1]
    assert steps and all(shape == (N, 1) for shape in steps)
    assert compute["forward_passes"] == len(model_calls.calls) == 1 + len(steps)

    # the generated tokens are all N candidates' (EOS counted in compute, not in the text)
    candidates = reply.response_metadata["candidates"]
    assert len(candidates) == N
    answer_tokens = sum(c["tokens"] for c in candidates)
    ended_by_eos = sum(c["finish_reason"] == "stop" for c in candidates)  # no stop strings set
    assert compute["generated_tokens"] == answer_tokens + ended_by_eos
    assert reply.response_metadata["reward"] == max(c["reward"] for c in candidates)


def test_retrieval_chain_batch_is_one_strategy_run(chain, policy, model_calls):
    recorder = Recorder()
    questions = list(QUESTIONS)
    answers = chain.batch(questions, config={"callbacks": [recorder]})

    assert len(answers) == len(questions) and all(a.strip() for a in answers)
    calls = recorder.calls()
    assert len(calls) == len(questions)
    by_question = {messages[-1].content: (messages, reply) for messages, reply in calls}
    assert sorted(answers) == sorted(reply.content for _, reply in calls)
    retrieved_first = {docs[0].id for docs in recorder.retrieved}
    assert retrieved_first == set(QUESTIONS.values())

    lengths = []
    for question, source in QUESTIONS.items():
        messages, reply = by_question[question]
        document = next(d for d in DOCUMENTS if d.id == source)
        assert document.page_content in messages[0].content
        length = len(policy.render(to_conversation(messages)))
        lengths.append(length)
        compute = reply.response_metadata["compute"]
        assert compute["batch_size"] == len(questions)  # one run shared by all questions
        assert compute["prompt_tokens"] == reply.usage_metadata["input_tokens"] == length

    # one prefill of the three distinct prompts, each once; decode steps of 3 * N rows
    prefills = [call for call in model_calls.calls if call[0][1] > 1]
    assert len(prefills) == 1
    (rows, _width), tokens = prefills[0]
    assert rows == len(questions) and tokens == sum(lengths)
    steps = [shape for shape, _ in model_calls.calls if shape[1] == 1]
    assert all(shape == (len(questions) * N, 1) for shape in steps)
    shared = {reply.response_metadata["compute"]["forward_passes"] for _, reply in calls}
    assert shared == {len(model_calls.calls)}
