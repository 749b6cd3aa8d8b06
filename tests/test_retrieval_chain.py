"""A retrieval chain end to end: retriever -> prompt -> Best-of-N on SmolLM2 -> parser.

The retrieved documents are the long part of every prompt. Best-of-N prefills that prompt once
and decodes all n candidates from copies of its KV cache, so the context costs its tokens once,
not n times. The test checks that in the compute counters and, independently, by watching the
calls into the policy's model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document

from align_chains import BestOfNChatModel, load_policy
from align_chains.models import EMBEDDED_POLICY
from align_chains.models.messages import to_conversation

pytestmark = pytest.mark.e2e


def _load_cookbook(name: str) -> Any:
    """Import ``cookbook/<name>.py``: the test runs the chain the cookbook shows, not a copy of it."""
    path = Path(__file__).resolve().parents[1] / "cookbook" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"cookbook_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


retrieval_chain = _load_cookbook("retrieval_chain")
N, DOCUMENTS = retrieval_chain.N, retrieval_chain.DOCUMENTS

QUESTIONS = {
    "When did the Vasa sink?": "vasa",
    "How do honey bees show each other where flowers are?": "bees",
    "Where is the Svalbard seed vault?": "seed-vault",
}


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
    return retrieval_chain.build_chain(BestOfNChatModel(policy=policy, n=N, max_tokens=24, seed=0))


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
