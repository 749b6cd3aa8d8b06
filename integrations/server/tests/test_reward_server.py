"""``align-chains serve-reward``: the vLLM /score and TEI /rerank shapes served from a local reward,
reached by ServedReward end to end through a real process, with concurrent requests batched."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from align_chains_server.reward_server import create_reward_app
from server_test_helpers import HERE, REPO, free_port

from align_chains import BestOfN, CallableReward, RewardError, ServedReward, load_reward
from align_chains.engine import SamplingParams
from align_chains.testing import tiny_policy

SPEC = "lexicon:sun,sea,sand"


@pytest.fixture(scope="module")
def reward_url(tmp_path_factory) -> Iterator[str]:
    """A real ``serve-reward`` process scoring with a lexicon reward (no weights to load)."""
    port = free_port()
    log = tmp_path_factory.mktemp("reward-server") / "log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "align_chains_server.reward_server",
        "--reward",
        SPEC,
        "--port",
        str(port),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve-reward did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


PROMPTS = ["Describe a beach.", "Describe a beach.", "A day out."]
ANSWERS = ["Sun and sea.", "Sand, sun, sea!", "Rain all day."]


def test_served_scores_equal_in_process_scores_through_both_apis(reward_url: str) -> None:
    expected = load_reward(SPEC).score(PROMPTS, ANSWERS)
    assert ServedReward(f"{reward_url}/score").score(PROMPTS, ANSWERS) == pytest.approx(expected)
    assert ServedReward(reward_url, api="tei-rerank").score(PROMPTS, ANSWERS) == pytest.approx(expected)


def test_best_of_n_with_the_served_reward_chooses_what_the_local_reward_chooses(reward_url: str) -> None:
    policy = tiny_policy()
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)
    local = BestOfN(n=4).run("Write about a beach.", policy, load_reward(SPEC), params)
    served = BestOfN(n=4).run("Write about a beach.", policy, load_reward(f"{reward_url}/score"), params)
    assert served.text == local.text and served.reward == pytest.approx(local.reward)


def test_the_endpoint_speaks_vllms_and_teis_shapes(reward_url: str) -> None:
    one_to_many = httpx.post(
        f"{reward_url}/score", json={"text_1": "beach", "text_2": ["sun", "rain"]}
    ).json()
    assert one_to_many["object"] == "list" and one_to_many["model"] == SPEC
    assert [(d["index"], d["object"]) for d in one_to_many["data"]] == [(0, "score"), (1, "score")]
    ranked = httpx.post(f"{reward_url}/rerank", json={"query": "q", "texts": ["rain", "sun sea sand"]}).json()
    assert [r["index"] for r in ranked] == [1, 0]  # TEI sorts by score, highest first
    assert 0.5 < ranked[0]["score"] < 1  # raw_scores false: through a sigmoid, as TEI does
    bad = httpx.post(f"{reward_url}/score", json={"text_1": ["a", "b"], "text_2": ["x", "y", "z"]})
    assert bad.status_code == 400 and "equal lengths" in bad.json()["error"]["message"]
    other = httpx.post(f"{reward_url}/score", json={"model": "other", "text_1": "a", "text_2": "b"})
    assert other.status_code == 404 and SPEC in other.json()["error"]["message"]


def _app_client(reward, **kwargs) -> tuple[httpx.AsyncClient, object]:
    app = create_reward_app(reward, model_name="r", **kwargs)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rm"), app


def test_concurrent_requests_are_scored_in_one_reward_call() -> None:
    calls: list[int] = []

    def length(prompts: list[str], responses: list[str]) -> list[float]:
        calls.append(len(responses))
        return [float(len(r)) for r in responses]

    async def main() -> list[dict]:
        client, _ = _app_client(CallableReward(length, batched=True), window_ms=50)
        async with client:
            bodies = [{"text_1": f"q{i}", "text_2": ["a" * i, "b"]} for i in range(8)]
            replies = await asyncio.gather(*(client.post("/score", json=b) for b in bodies))
        return [r.json() for r in replies]

    replies = asyncio.run(main())
    assert [[d["score"] for d in r["data"]] for r in replies] == [[float(i), 1.0] for i in range(8)]
    assert sum(calls) == 16 and len(calls) < 8, calls  # gathered, not one call per request


def test_a_failing_reward_is_a_500_that_the_client_reports_with_the_endpoint() -> None:
    def boom(prompt: str, response: str) -> float:
        raise RuntimeError("GPU fell off")

    async def main() -> httpx.Response:
        client, _ = _app_client(CallableReward(boom), api_key="k")
        async with client:
            assert (await client.post("/score", json={"text_1": "q", "text_2": "a"})).status_code == 401
            return await client.post(
                "/score", json={"text_1": "q", "text_2": "a"}, headers={"Authorization": "Bearer k"}
            )

    reply = asyncio.run(main())
    assert reply.status_code == 500 and "GPU fell off" in reply.json()["error"]["message"]
    transport = httpx.MockTransport(lambda request: httpx.Response(500, json=reply.json()))
    with pytest.raises(RewardError, match=r"http://rm/score answered 500.*GPU fell off"):
        ServedReward("http://rm/score", retries=0, transport=transport).score(["q"], ["a"])


def test_the_cli_entry_point_refuses_a_public_host_without_a_key_before_loading() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ALIGN_CHAINS_API_KEY"}
    command = [sys.executable, "-m", "align_chains.cli", "serve-reward", "--host", "0.0.0.0"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert "serve-reward: error: --host 0.0.0.0 is reachable from other machines" in done.stderr
