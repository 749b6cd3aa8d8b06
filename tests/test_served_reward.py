"""ServedReward against recorded vLLM /score, vLLM /classify and TEI /rerank responses (their
exact shapes), with retries and errors that name the endpoint. The end-to-end test against a real
``align-chains serve-reward`` process is in integrations/server/tests/test_reward_server.py."""

from __future__ import annotations

import json

import httpx
import pytest

from align_chains import BestOfN, InvalidInputError, RewardError, ServedReward, load_reward
from align_chains.engine import SamplingParams
from align_chains.rewards.specs import ServedSpec, describe, parse_reward_spec


def recorder(answer, calls: list[dict]):
    """A transport that records each request body and answers with ``answer(body)``."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append({"url": str(request.url), "body": body})
        status, payload = answer(body)
        return httpx.Response(status, json=payload)

    return httpx.MockTransport(handle)


def vllm_score(body: dict) -> tuple[int, dict]:
    """vLLM's /score response (vllm/entrypoints/openai/protocol.py ScoreResponse)."""
    data = [{"index": i, "object": "score", "score": float(len(t2))} for i, t2 in enumerate(body["text_2"])]
    return 200, {
        "id": "score-1f2e",
        "object": "list",
        "created": 1733000000,
        "model": "BAAI/bge-reranker-v2-m3",
        "data": data,
        "usage": {"prompt_tokens": 12, "total_tokens": 12, "completion_tokens": 0},
    }


def test_vllm_score_sends_pairwise_lists_in_batches_and_keeps_order() -> None:
    calls: list[dict] = []
    reward = ServedReward(
        "http://rm:8000/score", model="rm", batch_size=2, transport=recorder(vllm_score, calls)
    )
    scores = reward.score(["q1", "q2", "q3"], ["a", "bb", "ccc"])
    assert scores == [1.0, 2.0, 3.0]
    assert [c["body"] for c in calls] == [
        {"model": "rm", "text_1": ["q1", "q2"], "text_2": ["a", "bb"]},
        {"model": "rm", "text_1": ["q3"], "text_2": ["ccc"]},
    ]
    assert all(c["url"] == "http://rm:8000/score" for c in calls)


def test_vllm_classify_scores_the_chosen_class_probability() -> None:
    calls: list[dict] = []

    def classify(body: dict) -> tuple[int, dict]:  # vLLM's ClassificationResponse
        data = [
            {"index": i, "label": "LABEL_1", "probs": [0.25, 0.75] if "good" in text else [0.9, 0.1],
             "num_classes": 2}
            for i, text in enumerate(body["input"])
        ]  # fmt: skip
        return 200, {"id": "classify-9b", "object": "list", "created": 1, "model": "m", "data": data,
                     "usage": {"prompt_tokens": 10, "total_tokens": 10, "completion_tokens": 0}}  # fmt: skip

    reward = ServedReward("http://rm:8000/classify", template="Q: {prompt}\nA: {response}",
                          transport=recorder(classify, calls))  # fmt: skip
    assert reward.score(["hi", "hi"], ["good answer", "bad"]) == [0.75, 0.1]
    assert calls[0]["body"] == {"input": ["Q: hi\nA: good answer", "Q: hi\nA: bad"]}


def test_tei_rerank_groups_by_prompt_and_restores_order_from_sorted_results() -> None:
    calls: list[dict] = []

    def rerank(body: dict) -> tuple[int, list]:  # TEI answers sorted by score, highest first
        ranked = sorted(range(len(body["texts"])), key=lambda i: -len(body["texts"][i]))
        return 200, [{"index": i, "score": float(len(body["texts"][i]))} for i in ranked]

    reward = ServedReward("http://tei:8080", api="tei-rerank", transport=recorder(rerank, calls))
    assert reward.url == "http://tei:8080/rerank"
    scores = reward.score(["q1", "q2", "q1"], ["a", "bbbb", "ccc"])
    assert scores == [1.0, 4.0, 3.0]
    assert [c["body"] for c in calls] == [
        {"query": "q1", "texts": ["a", "ccc"], "raw_scores": True},
        {"query": "q2", "texts": ["bbbb"], "raw_scores": True},
    ]


def test_a_conversation_prompt_is_sent_as_role_lines() -> None:
    calls: list[dict] = []
    reward = ServedReward("http://rm:8000/score", transport=recorder(vllm_score, calls))
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reward.score([conversation], ["Hello"])
    assert calls[0]["body"]["text_1"] == ["system: Be brief.\nuser: Hi"]


def test_retries_503_then_succeeds_but_does_not_retry_400() -> None:
    calls: list[dict] = []
    answers = iter([(503, {"error": "warming up"}), (503, {"error": "warming up"})])

    def flaky(body: dict) -> tuple[int, dict]:
        return next(answers, None) or vllm_score(body)

    reward = ServedReward("http://rm:8000/score", retries=2, transport=recorder(flaky, calls))
    assert reward.score(["q"], ["abc"]) == [3.0]
    assert len(calls) == 3

    bad: list[dict] = []
    strict = ServedReward(
        "http://rm:8000/score", retries=3, transport=recorder(lambda b: (400, {"error": "bad model"}), bad)
    )
    with pytest.raises(RewardError, match=r"http://rm:8000/score answered 400.*api='vllm-score'"):
        strict.score(["q"], ["a"])
    assert len(bad) == 1


def test_unreachable_endpoint_names_the_url_and_how_to_start_one() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    reward = ServedReward("http://127.0.0.1:9/score", retries=1, transport=httpx.MockTransport(refuse))
    with pytest.raises(
        RewardError, match=r"127.0.0.1:9/score could not be reached after 2 attempts.*serve-reward"
    ):
        reward.score(["q"], ["a"])


def test_a_wrong_shape_or_missing_scores_is_a_reward_error() -> None:
    wrong = ServedReward("http://rm:8000/score", transport=recorder(lambda b: (200, {"scores": [1]}), []))
    with pytest.raises(RewardError, match="unexpected shape"):
        wrong.score(["q"], ["a"])
    short = ServedReward(
        "http://rm:8000/score",
        transport=recorder(lambda b: (200, {"data": [{"index": 0, "score": 1.0}]}), []),
    )
    with pytest.raises(RewardError, match=r"no score for items \[1\]"):
        short.score(["q", "q"], ["a", "b"])


def test_specs_read_the_api_from_the_path_and_fail_early_without_one() -> None:
    parsed = parse_reward_spec("http://localhost:8001/rerank")
    assert parsed == ServedSpec("http://localhost:8001/rerank")
    assert describe(parsed) == "http://localhost:8001/rerank"
    reward = load_reward("http://localhost:8001/score", timeout=2.0)
    assert isinstance(reward, ServedReward) and reward.api == "vllm-score" and reward.timeout == 2.0
    with pytest.raises(InvalidInputError, match=r"End the URL with /score .* or pass api="):
        parse_reward_spec("http://localhost:8001")
    with pytest.raises(InvalidInputError, match="Unknown served-reward api"):
        ServedReward("http://localhost:8001", api="openai")


def test_best_of_n_chooses_with_a_served_reward(tiny_policy) -> None:
    """A strategy uses a served reward like any other: one HTTP call scores all n candidates."""
    calls: list[dict] = []
    reward = ServedReward("http://rm:8000/score", transport=recorder(vllm_score, calls))
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=0)
    result = BestOfN(n=4).run("Say hi", tiny_policy, reward, params)
    assert len(calls) == 1 and len(calls[0]["body"]["text_2"]) == 4
    assert result.reward == max(len(t) for t in calls[0]["body"]["text_2"])
