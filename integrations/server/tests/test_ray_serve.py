"""The server as a Ray Serve application: a real local Ray cluster (2 CPUs), two replicas.

One module-scoped app: two replicas of a tiny Llama taught one tool call, each replica one
torch thread, an 8 s timeout. Requests go over HTTP through Serve's proxy, as a client's would:
plain, streamed, with tools; a request past its timeout (504) and a client that leaves, both
cancelling the work on their replica; a killed replica, whose requests move to the other one
while Serve starts a replacement. Each replica's /health names its process, so the tests can
tell them apart through the proxy. Before it, without a cluster: the documented ``serve run``
config, the deployment options the CLI options make, and bad options refused before any replica.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from align_chains_server import ray_serve
from align_chains_server.cli import build_parser
from align_chains_server.cli import main as serve_main
from ray import serve
from ray.serve.schema import ServeDeploySchema
from server_test_helpers import HERE, REPO, free_port
from test_server_tools import CALL, QUESTION, TOOLS, served_prompt

from align_chains.errors import AlignChainsError
from align_chains.testing import taught_policy, tiny_policy

CONFIG = REPO / "integrations" / "server" / "serve_config.yaml"
MODEL = "best-of-n"
HELLO = [{"role": "user", "content": "Hello there"}]
ESSAY = "Write an essay."
# Best-of-32 of 400 tokens with early rejection scoring the ~30 surviving rows after every token
# (rejecting 5% per decision) and the reward taking 0.05 s per text ("[crawl]"): about a second per
# token, far past the 8 s timeout on any machine unless cancelled, yet each reward call short
# enough that a cancellation lands within two seconds
HEAVY = {
    "messages": [{"role": "user", "content": f"[crawl] {ESSAY}"}],
    "max_tokens": 400,
    "temperature": 2.0,
    "align_chains": {"n": 32, "rejection": 0.05, "decision_every": 1},
}


@pytest.fixture(scope="module")
def taught_dir(tmp_path_factory) -> Path:
    """A tiny Llama taught to call ``multiply`` when tools are required, saved for the replicas."""
    user = [{"role": "user", "content": QUESTION}]
    prompt = served_prompt(tiny_policy(), {"messages": user, "tools": TOOLS, "tool_choice": "required"})
    policy = taught_policy([(prompt, CALL)], steps=100)
    path = tmp_path_factory.mktemp("ray-serve-policy")
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def app_url(taught_dir) -> Iterator[str]:
    """Serve on a local Ray cluster: 2 replicas of ``align-chains serve`` options, at this URL."""
    # replicas import the test reward (server_test_rewards) like the server processes do
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024**2)
    port = free_port()
    options = ["--policy", str(taught_dir), "--reward", "python:server_test_rewards:length", "--timeout", "8"]
    options += ["-o", "n=2", "-o", "temperature=0", "-o", "max_tokens=96", "--replicas", "2"]
    options += ["--health-check-period", "2", "--shutdown-timeout", "2"]
    options += ["--limit", "n=32", "--limit", "max_tokens=400", "--max-decode-tokens", "100000"]
    app = ray_serve.app_builder(ray_serve.BuilderArgs(options=options))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app, name=ray_serve.APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()


def post(url: str, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, **body}, timeout=timeout)


def replica_health(url: str, within_s: float = 30) -> dict[int, dict]:
    """/health of both replicas (keyed by process id), asking the proxy until both answered."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + within_s
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"only replicas {sorted(seen)} answered /health"
        health = httpx.get(f"{url}/health", timeout=10).json()
        seen[health["process"]] = health
    return seen


def replica_actors() -> list[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and f"#{ray_serve.DEPLOYMENT}#" in a["name"]
    ]


def parsed(*options: str) -> argparse.Namespace:
    return build_parser().parse_args(["--ray", *options])


def test_the_documented_serve_run_config_is_valid_and_its_builder_takes_its_options():
    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (application,) = config.applications
    assert application.import_path == "align_chains_server.ray_serve:app_builder"
    (deployment,) = application.deployments
    assert deployment.name == ray_serve.DEPLOYMENT  # the override reaches our deployment
    assert deployment.autoscaling_config["max_replicas"] > deployment.autoscaling_config["min_replicas"]
    assert isinstance(ray_serve.app_builder(ray_serve.BuilderArgs(**application.args)), serve.Application)


def test_replicas_autoscaling_resources_and_drain_follow_the_options():
    fixed = ray_serve.deployment_options(parsed("--replicas", "3", "--device", "cpu", "--timeout", "60"))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"]["num_cpus"] == 1 and "num_gpus" not in fixed["ray_actor_options"]
    assert fixed["graceful_shutdown_timeout_s"] == 60 + 10  # a request's timeout, then its cancellation
    scaled = ray_serve.deployment_options(
        parsed("--replicas", "1", "--max-replicas", "4", "--device", "cuda", "--threads-per-replica", "2")
    )
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 4,
    }
    assert scaled["ray_actor_options"]["num_gpus"] == 1
    assert scaled["ray_actor_options"]["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--replicas", "0"], "--replicas must be positive"),
        (["--replicas", "3", "--max-replicas", "2"], "--max-replicas (2) must be at least --replicas (3)"),
        (["--strategy", "no-such-strategy"], "no-such-strategy"),
    ],
)
def test_bad_options_fail_before_any_replica_starts(options, message):
    with pytest.raises((ValueError, AlignChainsError), match=re.escape(message)):
        ray_serve.app_builder(ray_serve.BuilderArgs(options=options))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--threads-per-replica", "0"], "--threads-per-replica must be positive"),
        (["--host", "0.0.0.0"], "no API key is set"),
    ],
)
def test_align_chains_serve_ray_refuses_bad_options_before_starting_ray(options, message, capsys):
    assert serve_main(["--ray", *options]) == 2
    assert message in capsys.readouterr().err


def test_plain_and_streamed_completions_are_answered_by_both_replicas(app_url):
    plain = post(app_url, {"messages": HELLO, "max_tokens": 6})
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["usage"]["completion_tokens"] >= 1
    assert len(body["align_chains"]["candidates"]) == 2  # the served default n=2

    with httpx.stream(
        "POST",
        f"{app_url}/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO, "max_tokens": 6, "stream": True},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")

    health = replica_health(app_url)
    assert all(h["status"] == "ok" for h in health.values())


def test_a_tool_call_through_the_proxy(app_url):
    messages = [{"role": "user", "content": QUESTION}]
    response = post(app_url, {"messages": messages, "tools": TOOLS, "tool_choice": "required"})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "multiply"
    assert json.loads(call["function"]["arguments"]) == {"a": 17, "b": 23}


def cancelled_total(url: str) -> int:
    return sum(h["batches"]["cancelled"] for h in replica_health(url).values())


def wait_idle(url: str, within_s: float) -> float:
    """Seconds until no replica has a request in flight (the cancelled work has stopped)."""
    began = time.monotonic()
    while any(h["in_flight"] for h in replica_health(url).values()):
        assert time.monotonic() - began < within_s, "a replica still runs cancelled work"
        time.sleep(0.1)
    return time.monotonic() - began


def test_a_timeout_cancels_the_work_on_its_replica(app_url):
    before = cancelled_total(app_url)
    began = time.monotonic()
    heavy = post(app_url, HEAVY)
    assert heavy.status_code == 504 and heavy.json()["error"]["type"] == "timeout_error"
    assert time.monotonic() - began < 15
    wait_idle(app_url, within_s=5)
    assert cancelled_total(app_url) > before


def test_a_client_leaving_cancels_the_work_on_its_replica(app_url):
    before = cancelled_total(app_url)
    host, port = app_url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, **HEAVY, "stream": True}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 10
        while not any(h["in_flight"] for h in replica_health(app_url).values()):
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.05)
    wait_idle(app_url, within_s=5)  # well before the 8 s timeout would have stopped it
    assert cancelled_total(app_url) > before


def test_a_killed_replica_is_replaced_and_requests_keep_being_answered(app_url):
    """(Runs last: it replaces a replica.)"""
    old = replica_actors()
    assert len(old) == 2
    ray.kill(ray.get_actor(old[0], namespace="serve"), no_restart=True)
    killed = time.monotonic()
    statuses = [post(app_url, {"messages": HELLO, "max_tokens": 4}).status_code for _ in range(6)]
    assert statuses == [200] * 6
    while True:
        current = replica_actors()
        replaced = old[0] not in current and len(current) == 2
        if replaced and len(replica_health(app_url, within_s=60)) == 2:
            break
        assert time.monotonic() - killed < 60, f"no replacement yet: {current}"
        time.sleep(0.5)
    print(f"\nreplica replaced and answering {time.monotonic() - killed:.1f} s after the kill")
