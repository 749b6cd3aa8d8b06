"""Schema-driven fuzzing (Schemathesis) of POST /v1/chat/completions, and the schema's numeric bounds.

Schemathesis reads the request schema from the server's own OpenAPI document and generates bodies
that follow it (positive: boundary values, huge and odd numbers within the bounds, deep nesting,
odd unicode) and bodies that break it (negative: every bound and type violated). Property, as in
the hand-written ``test_server_fuzz.py``: every answer is a 2xx or an OpenAI-shaped 4xx, never a
5xx, never slow. ``ALIGN_CHAINS_SCHEMA_FUZZ_EXAMPLES`` sets the examples per mode (default 40).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import schemathesis
from align_chains_server.app import ServerLimits, create_app
from align_chains_server.service import ServedModel
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from test_server_fuzz import SLOWEST_S, TIGHT, check_answer

from align_chains.rewards import CallableReward
from align_chains.scheduling import BatchingSettings
from align_chains.testing import tiny_policy

EXAMPLES = int(os.environ.get("ALIGN_CHAINS_SCHEMA_FUZZ_EXAMPLES", "40"))
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client():
    served = ServedModel(
        strategy="best-of-n", policy_spec="unused", limits=dict(TIGHT), defaults={"max_tokens": 4, "n": 2}
    )
    served._policy = tiny_policy()  # what load() would set, without loading from disk
    served._reward = CallableReward(lambda prompt, response: float(len(response)), name="length")
    app = create_app(
        served,
        limits=ServerLimits(timeout_s=SLOWEST_S, max_body_bytes=8192),
        batching=BatchingSettings(window_s=0.0, max_batch=8),
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**80),
        ("seed", 2**63),
        ("seed", -1),
        ("max_tokens", 2**80),
        ("max_completion_tokens", 0),
        ("n", 2**64),
        ("temperature", 1e308),
        ("top_p", 2.0),
        ("frequency_penalty", -3.0),
        ("top_logprobs", 10**6),
        ("logit_bias", {"42": 1e9}),
    ],
)
def test_out_of_range_numbers_get_a_400_naming_the_field(client, field, value):
    reply = client.post("/v1/chat/completions", json={"messages": HI, field: value})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"].startswith(field) and field in error["message"]


def test_the_largest_seed_runs(client):
    reply = client.post("/v1/chat/completions", json={"messages": HI, "seed": 2**63 - 1, "temperature": 1.0})
    assert reply.status_code == 200, reply.text


def test_a_time_budget_that_runs_out_is_the_clients_400_not_a_timeout(client):
    reply = client.post(
        "/v1/chat/completions", json={"messages": HI, "align_chains": {"time_budget_s": 1e-320}}
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "time_budget_s"
    assert reply.json()["error"]["code"] == "time_budget_exceeded"


def test_the_openapi_document_bounds_every_number(client):
    """Every integer or number field of the request schema has both bounds (what the fuzzer reads)."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    unbounded = []
    for model, schema in schemas.items():
        for name, prop in schema.get("properties", {}).items():
            for option in prop.get("anyOf", [prop]):
                if option.get("type") in ("integer", "number") and not (
                    {"minimum", "exclusiveMinimum"} & set(option)
                    and {"maximum", "exclusiveMaximum"} & set(option)
                ):
                    unbounded.append(f"{model}.{name}")
    assert unbounded == []
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")


def _send(client: TestClient, case) -> tuple[int, bytes, str, float]:
    kwargs = case.as_transport_kwargs(base_url="")
    if "json" in kwargs:
        content = json.dumps(kwargs["json"]).encode()
    else:
        content = kwargs.get("data") or b""
        content = content.encode() if isinstance(content, str) else content
    began = time.perf_counter()
    reply = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    return (
        reply.status_code,
        reply.content,
        reply.headers.get("content-type", ""),
        time.perf_counter() - began,
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_schemathesis_bodies_never_get_a_5xx_or_hang(client, mode):
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    operation = schema["/v1/chat/completions"]["POST"]
    statuses: dict[int, int] = {}
    slowest = [0.0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def one_case(case) -> None:
        status, body, content_type, seconds = _send(client, case)
        statuses[status] = statuses.get(status, 0) + 1
        slowest[0] = max(slowest[0], seconds)
        check_answer(status, body, content_type)
        assert seconds < SLOWEST_S

    one_case()
    assert sum(statuses.values()) >= EXAMPLES
    print(
        f"\nschemathesis {mode.value}: {sum(statuses.values())} bodies, status counts "
        f"{dict(sorted(statuses.items()))}, slowest {slowest[0]:.2f} s"
    )
