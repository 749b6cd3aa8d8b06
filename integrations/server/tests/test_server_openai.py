"""The server against the official openai client and raw HTTP, over loopback, on tiny models."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from server_test_helpers import API_KEY
from server_test_rewards import SLOW_MARKER

MODEL = "best-of-n"
HELLO = [{"role": "user", "content": "Say hello."}]


def client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url, api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs
    )


def test_non_streaming_answer_carries_reward_and_compute(server):
    response = client(server).chat.completions.create(
        model=MODEL, messages=HELLO, seed=3, extra_body={"align_chains": {"n": 3}}
    )
    choice = response.choices[0]
    ext = response.model_extra["align_chains"]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    # every token generated for the request; the chosen answer's are a detail
    assert response.usage.completion_tokens_details.model_extra["answer_tokens"] <= 8  # -o max_tokens=8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    # Best-of-3 under the length reward: the longest candidate, its reward its length
    assert len(ext["candidates"]) == 3
    assert ext["reward"] == float(len(choice.message.content)) == max(c["reward"] for c in ext["candidates"])
    assert ext["strategy"] == "best-of-n"
    assert ext["compute"]["reward_items"] == 3
    assert ext["compute"]["generated_tokens"] == response.usage.completion_tokens


def test_streaming_matches_non_streaming_and_ends_with_usage_and_extension(server):
    c = client(server)
    kwargs = dict(model=MODEL, messages=HELLO, seed=11, max_tokens=6, extra_body={"align_chains": {"n": 2}})
    whole = c.chat.completions.create(**kwargs)
    chunks = list(c.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1  # token by token
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.model_extra["align_chains"]["reward"] == whole.model_extra["align_chains"]["reward"]
    assert all(ch.usage is None for ch in chunks[:-1])


def test_streaming_without_usage_puts_the_extension_on_the_finish_chunk(server):
    with httpx.stream(
        "POST",
        f"{server.base_url}/chat/completions",
        json={"model": MODEL, "messages": HELLO, "stream": True},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    import json

    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert "usage" not in last
    assert set(last["align_chains"]) >= {"reward", "compute", "strategy"}


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]
    info = models.data[0].model_extra["align_chains"]
    assert (
        info["strategy"] == "best-of-n" and info["settings"]["n"] == 4 and info["settings"]["max_tokens"] == 8
    )
    health = server.health()
    assert health["status"] == "ok" and health["max_concurrency"] == 4


def test_concurrent_clients_get_their_own_answers(server):
    prompts = [f"Question number {i}?" for i in range(6)]

    def ask(prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        r = client(server).chat.completions.create(model=MODEL, messages=messages, seed=5, max_tokens=5)
        return r.choices[0].message.content

    alone = [ask(p) for p in prompts[:4]]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, prompts[:4]))
    assert together == alone  # seeded: concurrency changes nothing, no answer crosses requests


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"n": 3}, "n", "align_chains"),
        ({"align_chains": {"n": 0}}, "n", "greater than or equal to 1"),
        ({"align_chains": {"n": 10**6}}, "align_chains.n", "limit"),
        ({"align_chains": {"n": "many"}}, "n", "integer"),
        ({"beams": 3}, "beams", "Unknown setting 'beams'"),
        ({"align_chains": {"allocation": "greedy"}}, "allocation", "uniform"),
        ({"align_chains": {"budget": 4}}, None, "adaptive"),
        ({"temperature": "hot"}, "temperature", "number"),
        ({"max_tokens": 100000}, "max_tokens", "limit"),
        ({"functions": [{"name": "f"}]}, "functions", "legacy functions"),
    ],
)
def test_bad_settings_are_400_naming_the_field(server, extra, param, words):
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(model=MODEL, messages=HELLO, extra_body=extra)
    error = info.value.body
    assert words in error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b'{"model": "best-of-n"}', 400, "messages"),
        (b'{"messages": []}', 400, "messages"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', 400, "content"),
        (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400, "content"),
        (b'{"messages": [{"role": "assistant", "content": "hi"}]}', 400, "end the conversation"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}', 404, "not served"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes please"}', 400, "stream"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["a","b","c","d","e"]}', 400, "stop"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400, "max_tokens"),
    ],
)
def test_malformed_requests_get_clear_4xx(server, body, status, words):
    r = httpx.post(
        f"{server.base_url}/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_unknown_paths_and_methods_are_json_errors(server):
    assert httpx.get(f"{server.base_url}/nothing").json()["error"]["message"]
    r = httpx.get(f"{server.base_url}/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_body_over_the_limit_is_413(strict_server):
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 50_000}]}
    r = httpx.post(
        f"{strict_server.base_url}/chat/completions", json=big, headers={"authorization": f"Bearer {API_KEY}"}
    )
    assert r.status_code == 413
    assert "limit of 20000 bytes" in r.json()["error"]["message"]


def test_auth_refuses_missing_and_wrong_keys_and_never_logs_the_key(strict_server):
    with pytest.raises(openai.AuthenticationError):
        client(strict_server, api_key="wrong").chat.completions.create(model=MODEL, messages=HELLO)
    assert httpx.get(f"{strict_server.base_url}/models").status_code == 401
    ok = client(strict_server, api_key=API_KEY).chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=4
    )
    assert ok.choices[0].message.content is not None
    assert strict_server.health()["status"] == "ok"  # the health probe needs no key
    assert API_KEY not in strict_server.log.read_text()


def test_past_the_concurrency_limit_429_and_past_the_timeout_504(strict_server):
    keyed = client(strict_server, api_key=API_KEY)
    outcome: dict[str, BaseException] = {}

    def slow() -> None:
        try:
            keyed.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"{SLOW_MARKER} take your time"}],
                max_tokens=4,
                extra_body={"align_chains": {"n": 1}},  # one reward call: one 3 s sleep
            )
        except openai.APIStatusError as exc:
            outcome["slow"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + 10
    while strict_server.health()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert strict_server.health()["in_flight"] == 1
    with pytest.raises(openai.RateLimitError) as info:
        keyed.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert "busy" in info.value.body["message"]
    thread.join(timeout=20)
    assert outcome["slow"].status_code == 504  # the 2 s timeout, the reward sleeps 3 s
    assert "did not finish within 2 s" in outcome["slow"].body["message"]
    # the slot frees when the work really ends; then requests are served again
    deadline = time.monotonic() + 10
    while strict_server.health()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keyed.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4).choices
