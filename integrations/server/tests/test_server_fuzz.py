"""Property-based fuzzing of the HTTP API (hypothesis): whatever the body, the answer is a 2xx
or an OpenAI-shaped 4xx, never a 5xx, and never slow.

Bodies mix well-formed requests with every kind of damage: random JSON, wrong types, unknown
and out-of-range settings for each strategy, odd roles and contents, NaN and huge numbers,
streaming on and off, raw bytes. The app runs in-process on a tiny random policy with tight
limits, so valid requests run for real and quickly. ``ALIGN_CHAINS_FUZZ_EXAMPLES`` sets the
examples per strategy (default 60: 300 bodies in this test; the figure in docs/reliability.md
is from a larger run).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from align_chains_server.app import ServerLimits, create_app
from align_chains_server.service import ServedModel
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from align_chains.chat_models import CHAT_MODELS
from align_chains.rewards import CallableReward
from align_chains.scheduling import BatchingSettings
from align_chains.testing import tiny_policy

EXAMPLES = int(os.environ.get("ALIGN_CHAINS_FUZZ_EXAMPLES", "60"))
SLOWEST_S = 20.0  # a request slower than this counts as a hang
TIGHT = {
    "max_tokens": 4, "n": 3, "budget": 4, "k": 20, "m": 8, "cycles": 2, "mutation_max_tokens": 16,
    "max_total_tokens": 200, "beams": 2, "samples": 2, "chunk_tokens": 4, "chains": 2, "iterations": 2,
    "decode_top_k": 10, "time_budget_s": 5,
}  # fmt: skip
SMALL_DEFAULTS = {
    "max_tokens": 4, "n": 2, "k": 1, "m": 4, "cycles": 1, "mutation_max_tokens": 16, "beams": 2,
    "samples": 2, "chunk_tokens": 4, "chains": 2, "iterations": 2,
}  # fmt: skip
OUTCOMES: Counter[int] = Counter()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
small_numbers = st.one_of(
    st.integers(min_value=-3, max_value=12),
    st.floats(min_value=-1, max_value=5, allow_nan=False),
    st.sampled_from([0, 1, 10**9, float("nan"), float("inf"), "4", None, True, [], {}]),
)
contents = st.one_of(
    st.text(max_size=60),
    st.none(),
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "audio"])}, optional={"text": st.text(max_size=20)}
        ),
        max_size=3,
    ),
    json_values,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "developer", "assistant", "tool", "wizard", ""])},
        optional={"content": contents, "name": st.text(max_size=5)},
    ),
    max_size=4,
)


def request_bodies(strategy: str) -> st.SearchStrategy[bytes]:
    """Byte bodies for POST /v1/chat/completions aimed at ``strategy``'s settings."""
    names = sorted(set(CHAT_MODELS[strategy].strategy_field_names()) | set(TIGHT) | {"top_k", "bogus"})
    setting_values = st.dictionaries(
        st.sampled_from(names), st.one_of(small_numbers, json_values), max_size=4
    )
    openai_fields = st.fixed_dictionaries(
        {"messages": messages},
        optional={
            "model": st.sampled_from([strategy, "", "gpt-4o", None, 3]),
            "stream": st.one_of(st.booleans(), json_values),
            "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
            "max_tokens": small_numbers,
            "max_completion_tokens": small_numbers,
            "temperature": small_numbers,
            "top_p": small_numbers,
            "seed": small_numbers,
            "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=6), json_values),
            "n": small_numbers,
            "tools": json_values,
            "logprobs": json_values,
            "response_format": json_values,
            "align_chains": st.one_of(setting_values, json_values),
        },
    )
    structured = st.tuples(openai_fields, setting_values).map(lambda pair: {**pair[1], **pair[0]})
    return st.one_of(
        structured.map(lambda body: json.dumps(body).encode()),  # NaN/Infinity as Python's json writes them
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    )


@pytest.fixture(scope="module")
def loaded():
    return tiny_policy(), CallableReward(lambda prompt, response: float(len(response)), name="length")


def check_answer(status: int, body: bytes, content_type: str) -> None:
    assert status < 500, f"{status}: {body[:300]!r}"
    if 200 <= status < 300:
        if content_type.startswith("text/event-stream"):
            assert body.rstrip().endswith(b"data: [DONE]")
        else:
            assert json.loads(body)["choices"][0]["message"]["role"] == "assistant"
        return
    assert 400 <= status < 500, status
    error = json.loads(body)["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("strategy", sorted(CHAT_MODELS))
def test_fuzzed_bodies_never_get_a_5xx_or_hang(strategy, loaded):
    own = set(CHAT_MODELS[strategy].strategy_field_names()) | {"max_tokens"}
    defaults = {k: v for k, v in SMALL_DEFAULTS.items() if k in own}
    served = ServedModel(strategy=strategy, policy_spec="unused", limits=dict(TIGHT), defaults=defaults)
    served._policy, served._reward = loaded  # what load() would set, without loading from disk
    app = create_app(
        served,
        limits=ServerLimits(timeout_s=SLOWEST_S, max_body_bytes=4096),
        batching=BatchingSettings(window_s=0.0, max_batch=8),
    )
    seen: Counter[int] = Counter()
    with TestClient(app, raise_server_exceptions=False) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=SLOWEST_S * 1000,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=request_bodies(strategy))
        def one_body(body: bytes) -> None:
            r = client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            seen[r.status_code] += 1
            check_answer(r.status_code, r.content, r.headers.get("content-type", ""))

        one_body()
        assert client.get("/health").json()["in_flight"] == 0
    OUTCOMES.update(seen)
    assert sum(seen.values()) >= EXAMPLES
    print(f"\n{strategy}: {sum(seen.values())} bodies, status counts {dict(sorted(seen.items()))}")


def test_fuzz_reached_the_strategies():
    """Not every body is rejected: the fuzzing also ran real requests (2xx)."""
    if not OUTCOMES:
        pytest.skip("run together with the fuzz tests")
    assert sum(n for status, n in OUTCOMES.items() if 200 <= status < 300) > 0, OUTCOMES
    assert sum(n for status, n in OUTCOMES.items() if 400 <= status < 500) > 0, OUTCOMES
