"""RerankChatModel(strategy="darwin"): DARWIN with a chat model that is not align_chains' as the policy.

The wrapped model is a small deterministic ``BaseChatModel``: asked to rewrite an instruction it
lists "<instruction> v1" ... "<instruction> vN"; asked anything else, its answer to an
instruction ending in "vI" is the six words "vI-0 ... vI-5", of which it returns the next
``max_tokens`` after the partial answer in a trailing ``AIMessage`` (continuing it, as vLLM does
with ``continue_final_message``). The reward sums the version digits of the answer's words, so
the higher version and the longer answer win; it records what it was asked to score against.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel, FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr

from align_chains import CallableReward, InvalidInputError, RerankChatModel, RewardError
from align_chains.errors import SamplingFailedError

WORDS = 6
_REWRITE = re.compile(
    r"Rewrite the instruction below in (?:(\d+) different ways|way).*Instruction: (.*)", re.S
)


def answer_words(instruction: str) -> list[str]:
    """Six words; two for a "Short" instruction."""
    found = re.findall(r"v(\d)\b", instruction)
    version = found[-1] if found else "0"
    return [f"v{version}-{j}" for j in range(2 if instruction.startswith("Short") else WORDS)]


class VersionWriter(BaseChatModel):
    """Deterministic policy honouring ``max_tokens`` (words) and continuing a trailing AIMessage."""

    max_tokens: int | None = None
    extra_body: dict[str, Any] = Field(default_factory=lambda: {"top_k": 40})
    # instruction (or "mutation" for rewrite requests) -> errors raised by its next calls, in order
    failures: dict[str, list[BaseException]] = Field(default_factory=dict)
    calls: list[tuple[list[BaseMessage], dict[str, Any]]] = Field(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "version-writer"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        cap = kwargs.get("max_tokens", self.max_tokens)
        partial = messages[-1].text if isinstance(messages[-1], AIMessage) else ""
        instruction = next(m.text for m in reversed(messages) if isinstance(m, HumanMessage))
        rewrite = _REWRITE.search(instruction)
        with self._lock:
            self.calls.append((list(messages), {"stop": stop, **kwargs}))
            queue = self.failures.get("mutation" if rewrite else instruction)
            error = queue.pop(0) if queue else None
        if error is not None:
            raise error
        if rewrite:
            n, parent = int(rewrite.group(1) or 1), rewrite.group(2).strip()
            text = "\n".join(f"{i}. {parent} v{i}" for i in range(1, n + 1))
            return _result(text, 1, "stop")
        words = answer_words(instruction)
        done = len(partial.split())
        piece = words[done:] if cap is None else words[done : done + cap]
        text = " ".join(piece)
        if partial and text:
            text = " " + text
        reason = "stop" if done + len(piece) == len(words) else "length"
        return _result(text, len(piece), reason)


def _result(text: str, tokens: int, reason: str) -> ChatResult:
    usage = {"input_tokens": 10, "output_tokens": tokens, "total_tokens": 10 + tokens}
    message = AIMessage(content=text, usage_metadata=usage, response_metadata={"finish_reason": reason})
    return ChatResult(generations=[ChatGeneration(message=message)])


class VersionReward(CallableReward):
    """Sum of the version digits of the answer's words; records every (prompt, response) scored."""

    def __init__(self) -> None:
        super().__init__(lambda prompt, response: 0.0, name="versions")
        self.calls = 0
        self.seen: list[tuple[Any, str]] = []

    def _score(self, prompts, responses):
        self.calls += 1
        self.seen.extend(zip(prompts, responses, strict=True))
        return [float(sum(int(d) for d in re.findall(r"v(\d)-\d", r))) for r in responses]


def darwin(chat: BaseChatModel, reward: Any = None, **kwargs: Any) -> RerankChatModel:
    settings = {"n": 3, "k": 1, "cycles": 1, "seed": 0, "retry_wait": 0.0, "max_concurrency": 1, **kwargs}
    return RerankChatModel(chat_model=chat, reward=reward or VersionReward(), strategy="darwin", **settings)


def continued(chat: BaseChatModel, reward: Any = None, **kwargs: Any) -> RerankChatModel:
    return darwin(chat, reward, continuation="final-message", m=2, max_tokens=WORDS, **kwargs)


def test_mutations_come_from_the_wrapped_model_and_replaced_rows_keep_their_own_instruction() -> None:
    chat, reward = VersionWriter(), VersionReward()
    message = continued(chat, reward).invoke("Sleep tips", stop=["END"])
    assert message.content == "v3-0 v3-1 v3-2 v3-3 v3-4 v3-5"
    meta = message.response_metadata
    assert meta["strategy"] == "darwin" and meta["continuation"] == "final-message"
    assert meta["reward"] == 18.0 and meta["finish_reason"] == "stop"
    assert meta["replacements"] == 4  # rows 0 and 1, after segments 1 and 2

    # the mutation request went to the wrapped model, with its list cap and no stop strings
    rewrites = [(m, kw) for m, kw in chat.calls if _REWRITE.search(m[-1].text)]
    assert len(rewrites) == 1 and "Instruction: Sleep tips" in rewrites[0][0][-1].text
    assert rewrites[0][1]["max_tokens"] == 192 and rewrites[0][1]["stop"] is None
    cycle = {c["row"]: c for c in meta["candidates"] if c["cycle"] == 1}
    # every row still answers its own instruction (the authors' replacement), from the winner's state
    assert {r: c["instruction"] for r, c in cycle.items()} == {r: f"Sleep tips v{r + 1}" for r in range(3)}
    assert cycle[0]["text"] == "v3-0 v3-1 v3-2 v3-3 v1-4 v1-5"
    assert cycle[1]["text"] == "v3-0 v3-1 v3-2 v3-3 v2-4 v2-5"

    # segment 1: one call per mutation, capped at m; later segments continue the WINNER's partial
    # answer, each row under ITS OWN mutated instruction
    answers = [(m, kw) for m, kw in chat.calls if not _REWRITE.search(m[-1].text)]
    assert all(kw["stop"] == ["END"] for _, kw in answers)
    first_segment = [m for m, kw in answers if kw.get("max_tokens") == 2 and isinstance(m[-1], HumanMessage)]
    assert sorted(m[-1].text for m in first_segment) == ["Sleep tips v1", "Sleep tips v2", "Sleep tips v3"]
    continued_calls = [m for m, _ in answers if isinstance(m[-1], AIMessage)]
    assert len(continued_calls) == 6  # 3 rows x segments 2 and 3
    assert sorted((m[-2].text, m[-1].text) for m in continued_calls) == sorted(
        (f"Sleep tips v{v}", state) for v in (1, 2, 3) for state in ("v3-0 v3-1", "v3-0 v3-1 v3-2 v3-3")
    )
    replaced = [e for e in meta["trace"] if e["event"] == "replace"]
    assert {(e["row"], e["source"]) for e in replaced if e["segment"] == 1} == {(0, 2), (1, 2)}
    assert all(e["source_mutation"] == 2 and e["mutation"] == e["row"] for e in replaced)
    # the top k (k=1) by reward at the first scoring; wins go to the row's own mutation
    first = [e for e in meta["trace"] if e["event"] == "score" and e["segment"] == 1]
    assert [(e["reward"], e["top_k"]) for e in first] == [(2.0, False), (4.0, False), (6.0, True)]
    assert [(e["mutation"], e["wins"]) for e in meta["trace"] if e["event"] == "winner"] == [(2, 3)]


def test_vllm_continuation_adds_vllms_fields_to_the_continuing_calls_only() -> None:
    chat = VersionWriter()
    meta = darwin(chat, continuation="vllm", m=2, max_tokens=WORDS).invoke("Sleep tips").response_metadata
    assert meta["strategy"] == "darwin" and meta["replacements"] == 4
    continuing = [kw for m, kw in chat.calls if isinstance(m[-1], AIMessage)]
    others = [kw for m, kw in chat.calls if not isinstance(m[-1], AIMessage)]
    assert len(continuing) == 6 and len(others) == 1 + 1 + 3
    expected = {"top_k": 40, "continue_final_message": True, "add_generation_prompt": False}
    assert all(kw["extra_body"] == expected for kw in continuing)
    assert all("extra_body" not in kw for kw in others)
    with pytest.raises(InvalidInputError, match=r"continuation='vllm' .* has no extra_body field"):
        darwin(FakeListChatModel(responses=["a"]), continuation="vllm", max_tokens_param="responses")


def test_continue_kwargs_go_only_to_continuation_calls_over_the_models_own() -> None:
    chat = VersionWriter()
    flag = {"extra_body": {"continue_final_message": True, "add_generation_prompt": False}}
    continued(chat, continue_kwargs=flag).invoke("Sleep tips")
    continuing = [kw for m, kw in chat.calls if isinstance(m[-1], AIMessage)]
    others = [kw for m, kw in chat.calls if not isinstance(m[-1], AIMessage)]
    assert len(continuing) == 6 and len(others) == 1 + 1 + 3
    merged = {"top_k": 40, "continue_final_message": True, "add_generation_prompt": False}
    assert all(kw["extra_body"] == merged for kw in continuing)
    assert all("extra_body" not in kw for kw in others)  # s0, the list, first segments: a new reply


def test_reward_is_computed_against_the_original_conversation() -> None:
    chat, reward = VersionWriter(), VersionReward()
    conversation = [SystemMessage(content="Be brief."), HumanMessage(content="Sleep tips")]
    continued(chat, reward).invoke(conversation)
    assert reward.seen and all(
        prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sleep tips"}]
        for prompt, _ in reward.seen
    )
    # while the candidates answered mutated instructions, with the system turn kept
    mutated = [
        m for m, _ in chat.calls if any(isinstance(x, HumanMessage) and x.text == "Sleep tips v2" for x in m)
    ]
    assert mutated and all(isinstance(m[0], SystemMessage) and m[0].text == "Be brief." for m in mutated)


def test_archive_grows_and_later_cycles_mutate_a_parent_from_it() -> None:
    chat = VersionWriter()
    message = continued(chat, cycles=2).invoke("Sleep tips")
    meta = message.response_metadata
    winners = [e for e in meta["trace"] if e["event"] == "winner" and e["cycle"] == 1]
    assert [(w["mutation"], w["added"]) for w in winners] == [(2, True)]
    # the winner beat its parent (s0 scored 0), so the parent left the archive
    listed = [e["instruction"] for e in meta["trace"] if e["event"] == "archive" and e["cycle"] == 2]
    assert listed == ["Sleep tips v3"]
    parent = next(e["instruction"] for e in meta["trace"] if e["event"] == "archive" and e["parent"]
                  and e["cycle"] == 2)  # fmt: skip
    # cycle 2's best rewrite only ties its parent (18): nothing is added or dropped
    assert {a["instruction"]: a["reward"] for a in meta["archive"]} == {"Sleep tips v3": 18.0}
    rewrites = [m[-1].text for m, _ in chat.calls if _REWRITE.search(m[-1].text)]
    assert len(rewrites) == 2 and rewrites[1].endswith(f"Instruction: {parent}")
    assert meta["cycles_completed"] == 2
    assert len(meta["candidates"]) == 1 + 3 + 3  # s0 and each cycle's final rows


def test_counters_usage_and_batch_share_reward_calls() -> None:
    chat, reward = VersionWriter(), VersionReward()
    out = continued(chat, reward).batch(["Sleep tips", "Run tips"])
    assert [m.content for m in out] == ["v3-0 v3-1 v3-2 v3-3 v3-4 v3-5"] * 2
    compute = out[0].response_metadata["compute"]
    # one reward call for both prompts' s0, then one per segment (3 segments)
    assert reward.calls == 4 and compute["reward_calls"] == 4
    assert compute["mutation_calls"] == 1 and compute["answer_calls"] == 1 + 3 * 3
    assert compute["calls"] == 11 and compute["failures"] == 0 and compute["seconds"] > 0
    assert compute["candidates"] == 4 and compute["reward_items"] == 1 + 3 + 3 + 3
    # paid tokens: 11 calls x 10 prompt tokens; outputs 6 (s0) + 1 (list) + 9 x 2 (segments)
    assert out[0].usage_metadata == {"input_tokens": 110, "output_tokens": 25, "total_tokens": 135}
    assert len(chat.calls) == 22


def test_a_prompt_whose_answers_ended_sits_out_the_others_segments() -> None:
    alone = continued(VersionWriter()).invoke("Short tips").response_metadata
    short, _ = continued(VersionWriter()).batch(["Short tips", "Sleep tips"])
    meta = short.response_metadata
    assert short.content == "v3-0 v3-1" and meta["candidates"] == alone["candidates"]
    assert [e["segment"] for e in meta["trace"] if e["event"] == "score"] == [1, 1, 1]
    winners = [(e["mutation"], e["wins"]) for e in meta["trace"] if e["event"] == "winner"]
    assert (
        winners == [(2, 1)] == [(e["mutation"], e["wins"]) for e in alone["trace"] if e["event"] == "winner"]
    )


def test_whole_response_mode_works_on_any_chat_model() -> None:
    chat = VersionWriter()
    message = darwin(chat).invoke("Sleep tips")  # continuation="none" by default
    meta = message.response_metadata
    assert message.content == "v3-0 v3-1 v3-2 v3-3 v3-4 v3-5" and meta["continuation"] == "none"
    # whole answers, nothing replaced mid-answer: the authors' ablation, named as such
    assert meta["strategy"] == "darwin-mutation-no-replacement" and meta["replacements"] == 0
    assert not any(isinstance(m[-1], AIMessage) for m, _ in chat.calls)  # never a partial answer
    assert not any(e["event"] == "replace" for e in meta["trace"])
    assert meta["compute"]["answer_calls"] == 1 + 3 and meta["compute"]["reward_calls"] == 2
    # a model without a max_tokens field: whole answers still work (its own cap applies); with one
    # worker the calls run in order: s0, the list, the three candidates
    listing = "1. Sleep tips v1\n2. Sleep tips v2\n3. Sleep tips v3"
    plain = FakeListChatModel(responses=["v1-0", listing, "v1-0 v1-1", "v9-0", "v2-0"])
    meta = darwin(plain).invoke("Sleep tips").response_metadata
    assert meta["reward"] == 9.0 and meta["candidates"][2]["text"] == "v9-0"
    assert [c["instruction"] for c in meta["candidates"]] == ["Sleep tips"] + [
        f"Sleep tips v{i}" for i in (1, 2, 3)
    ]


def test_transient_errors_are_retried_and_one_failed_candidate_is_dropped() -> None:
    chat = VersionWriter(
        failures={
            "Sleep tips v1": [TimeoutError("slow"), ValueError("400 bad request")],
            "Sleep tips v2": [TimeoutError("slow")],
        }
    )
    message = continued(chat).invoke("Sleep tips")
    meta = message.response_metadata
    assert message.content == "v3-0 v3-1 v3-2 v3-3 v3-4 v3-5"
    assert meta["failed_calls"] == 1 and "400 bad request" in meta["call_errors"][0]
    dropped = [e for e in meta["trace"] if e["event"] == "call_failed"]
    assert [(e["row"], e["mutation"]) for e in dropped] == [(0, 0)]
    assert {c["row"] for c in meta["candidates"] if c["cycle"] == 1} == {1, 2}  # the survivors
    # s0; segment 1: row 0 twice (retried, then failed for good), row 1 twice (retried), row 2 once;
    # then row 1 copies row 2 and both run 2 more segments
    assert meta["compute"]["answer_calls"] == 1 + 2 + 2 + 1 + 2 * 2
    assert meta["compute"]["failures"] == 1 and meta["reward"] == 18.0


def test_a_failed_mutation_list_falls_back_to_the_parent() -> None:
    chat = VersionWriter(failures={"mutation": [ValueError("400")]})
    meta = darwin(chat).invoke("Sleep tips").response_metadata
    assert [e["event"] for e in meta["trace"]].count("mutation_failed") == 1
    assert {c["instruction"] for c in meta["candidates"] if c["cycle"] == 1} == {"Sleep tips"}
    assert meta["failed_calls"] == 1 and meta["reward"] == 0.0


def test_everything_failing_raises_with_context() -> None:
    chat = VersionWriter(failures={"Sleep tips": [TimeoutError("down")] * 9, "mutation": [ValueError("400")]})
    with pytest.raises(
        SamplingFailedError, match=r"DARWIN over VersionWriter: every answer call failed"
    ) as info:
        darwin(chat, retry_attempts=2).invoke("Sleep tips")
    assert len(info.value.errors) == 1 + 1 + 3  # s0, the list, the three candidates
    assert sum(isinstance(e, TimeoutError) for e in info.value.errors) == 4


def test_reward_failure_hands_back_the_answers() -> None:
    def broken(prompt: str, response: str) -> float:
        raise RuntimeError("verifier down")

    with pytest.raises(RewardError, match="verifier down") as info:
        continued(VersionWriter(), reward=CallableReward(broken)).invoke("Sleep tips")
    assert [m.content for m in info.value.partial[0]] == ["v0-0 v0-1 v0-2 v0-3 v0-4 v0-5"]


def test_async_invoke() -> None:
    message = asyncio.run(continued(VersionWriter()).ainvoke("Sleep tips"))
    assert message.content == "v3-0 v3-1 v3-2 v3-3 v3-4 v3-5"


def test_settings_are_validated_at_construction() -> None:
    chat = VersionWriter()
    assert RerankChatModel(chat_model=chat, reward=VersionReward(), strategy="darwin").n == 5  # paper
    with pytest.raises(InvalidInputError, match="k=4 must not exceed n=3"):
        darwin(chat, k=4)
    with pytest.raises(
        InvalidInputError, match="m, continue_kwargs only apply with continuation='final-message'"
    ):
        darwin(chat, m=8, continue_kwargs={"extra_body": {}})
    with pytest.raises(
        InvalidInputError, match=r"FakeListChatModel has no 'max_tokens' field.*max_tokens_param"
    ):
        darwin(FakeListChatModel(responses=["a"]), continuation="final-message")
    with pytest.raises(InvalidInputError, match="FakeListChatModel has no 'max_tokens' field"):
        darwin(FakeListChatModel(responses=["a"]), max_tokens=64)
    with pytest.raises(InvalidInputError, match="cycles, seed only apply to strategy='darwin'"):
        RerankChatModel(chat_model=chat, reward=VersionReward(), cycles=2, seed=1)
    with pytest.raises(InvalidInputError, match="budget= only applies"):
        darwin(chat, budget=4)


@pytest.mark.e2e
def test_darwin_around_a_real_chat_model_on_embedded_defaults() -> None:
    from align_chains import BestOfNChatModel

    served = BestOfNChatModel(n=1, reward=lambda prompt, response: 0.0, temperature=0.7, top_k=40, seed=0)
    model = RerankChatModel(
        chat_model=served,
        strategy="darwin",
        n=2,
        k=1,
        cycles=1,
        max_tokens=16,
        mutation_max_tokens=64,
        seed=0,
    )  # reward: the embedded MiniLM
    message = model.invoke("Give me three tips for better sleep.")
    meta = message.response_metadata
    assert message.content.strip() and meta["continuation"] == "none"
    assert meta["reward"] == max(c["reward"] for c in meta["candidates"])
    assert len(meta["candidates"]) == 1 + 2 and all(c["tokens"] <= 16 for c in meta["candidates"])
    assert meta["compute"] | {"seconds": 0} == {
        "candidates": 3, "calls": 4, "answer_calls": 3, "mutation_calls": 1, "failures": 0,
        "reward_calls": 2, "reward_items": 3, "seconds": 0,
    }  # fmt: skip
    assert message.usage_metadata["output_tokens"] > 0


def test_the_trace_plot_draws_a_wrapped_models_darwin_trace(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from align_chains.plots import plot_darwin_trace

    message = continued(VersionWriter(), cycles=2).invoke("Sleep tips")
    figure = plot_darwin_trace(message.response_metadata["trace"], tmp_path / "trace.png")
    assert (tmp_path / "trace.png").stat().st_size > 0
    assert [ax.get_title().split(" (")[0] for ax in figure.axes] == ["cycle 1", "cycle 2"]
