"""Faults against real server processes: a reward failing mid-batch, a client leaving while
its answer is computed, a request hitting its timeout (the issue's "one heavy request": a
DARWIN request with cycles=100000), and SIGTERM during a long request.

The DARWIN servers lift the cost limits on purpose so the heavy request runs; the point here
is what happens when one does.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server_test_helpers import Server, launch_server, wait_ready
from server_test_rewards import BOOM_MARKER

HELLO = [{"role": "user", "content": "Hi"}]
UNLIMITED = [
    "--limit", "cycles=100000",
    "--max-decode-tokens", "1000000000",
    "--max-forward-passes", "1000000000",
    "--max-reward-items", "1000000000",
]  # fmt: skip
HEAVY = {"messages": [{"role": "user", "content": "Write an essay."}], "max_tokens": 256,
         "align_chains": {"cycles": 100000, "n": 8, "k": 2, "m": 4}}  # fmt: skip


def darwin_args(policy_dir, timeout: float) -> list[str]:
    return [
        "--strategy", "darwin", "--policy", str(policy_dir), "--reward", "server_test_rewards:length",
        "-o", "max_tokens=8", "-o", "n=2", "-o", "k=1", "-o", "m=4", "-o", "cycles=1",
        "-o", "mutation_max_tokens=16", "--timeout", str(timeout), *UNLIMITED,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fault_servers(tiny_policy_dir, tmp_path_factory) -> Iterator[dict[str, Server]]:
    """Started side by side: a batching server whose reward raises on [boom], and a DARWIN
    server with a 3 s timeout (the last test sends it SIGTERM)."""
    tmp = tmp_path_factory.mktemp("fault-servers")
    launched = {
        "batching": launch_server(
            [
                "--policy",
                str(tiny_policy_dir),
                "--reward",
                "server_test_rewards:length_or_boom",
                "-o",
                "max_tokens=6",
                "-o",
                "n=2",
                "--batch-window-ms",
                "400",
                "--max-batch",
                "8",
            ],
            tmp / "batching.log",
        ),
        "darwin": launch_server(
            [*darwin_args(tiny_policy_dir, 3), "--shutdown-timeout", "5"], tmp / "darwin.log"
        ),
    }
    try:
        yield {name: wait_ready(s, wait_s=300) for name, s in launched.items()}
    finally:
        for s in launched.values():
            s.stop()


def post(server: Server, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=timeout)


def wait_idle(server: Server, within_s: float) -> float:
    """Seconds until /health shows nothing in flight (fails past ``within_s``)."""
    began = time.monotonic()
    while server.health()["in_flight"]:
        assert time.monotonic() - began < within_s, f"work still in flight after {within_s} s"
        time.sleep(0.02)
    return time.monotonic() - began


def test_concurrent_requests_share_one_batched_run(fault_servers):
    server = fault_servers["batching"]
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: post(server, {"messages": m}), prompts))
    assert [r.status_code for r in answers] == [200] * 4
    sizes = [r.json()["align_chains"]["compute"]["batch_size"] for r in answers]
    assert max(sizes) >= 2, sizes  # the 400 ms window gathered them
    for r in answers:  # per-request usage: its own prompt and answer
        usage = r.json()["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_reward_failing_mid_batch_fails_only_its_own_request(fault_servers):
    server = fault_servers["batching"]
    before = server.health()["batches"]["retried_alone"]
    contents = ["First?", f"{BOOM_MARKER} second", "Third?", "Fourth?"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda c: post(server, {"messages": [{"role": "user", "content": c}]}), contents)
        )
    assert [r.status_code for r in answers] == [200, 500, 200, 200], [r.text for r in answers]
    error = answers[1].json()["error"]
    assert error["type"] == "server_error" and "reward model failed" in error["message"]
    assert all(
        r.json()["choices"][0]["message"]["content"] is not None for r in answers if r.status_code == 200
    )
    assert server.health()["batches"]["retried_alone"] > before  # they had been batched together
    assert "the reward service rejected this prompt" not in server.log.read_text()  # no content logged


def test_the_heavy_request_is_cancelled_at_its_timeout_and_the_next_one_is_served(fault_servers):
    """The issue's scenario: DARWIN with cycles=100000 takes the policy; at the 3 s timeout it
    is cancelled (504), the policy frees within a step, and a small request is answered."""
    server = fault_servers["darwin"]
    began = time.monotonic()
    heavy = post(server, HEAVY)
    answered_504 = time.monotonic()
    assert heavy.status_code == 504 and heavy.json()["error"]["type"] == "timeout_error"
    assert 2.5 < answered_504 - began < 6
    small = post(server, {"messages": HELLO}, timeout=30)
    small_latency = time.monotonic() - answered_504
    assert small.status_code == 200 and small.json()["choices"][0]["message"]["content"] is not None
    assert small_latency < 5, f"the small request took {small_latency:.2f} s after the cancel"
    wait_idle(server, within_s=2)
    print(
        f"\nheavy: 504 after {answered_504 - began:.2f} s; small request answered {small_latency:.2f} s later"
    )


def test_a_client_leaving_cancels_its_work(fault_servers):
    """A streaming client disconnects while its answer is computed: the work stops, the slot
    and the policy free, and the next request is served at once."""
    server = fault_servers["darwin"]
    cancelled_before = server.health()["batches"]["cancelled"]
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({**HEAVY, "stream": True}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 10
        while server.health()["in_flight"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.5)  # it is running now
    left = time.monotonic()
    freed_after = wait_idle(server, within_s=2)
    assert server.health()["batches"]["cancelled"] > cancelled_before
    small = post(server, {"messages": HELLO}, timeout=30)
    assert small.status_code == 200
    print(f"\nclient left: work stopped and the slot freed {freed_after:.2f} s later; "
          f"next answer {time.monotonic() - left:.2f} s after the disconnect")  # fmt: skip


def test_sigterm_during_a_long_request_exits_promptly(fault_servers):
    """(Runs last: it ends the DARWIN server.)"""
    server = fault_servers["darwin"]
    outcome: dict[str, httpx.Response | Exception] = {}

    def heavy() -> None:
        try:
            outcome["r"] = post(server, HEAVY, timeout=60)  # the 3 s timeout would 504 it
        except httpx.HTTPError as exc:
            outcome["r"] = exc

    thread = threading.Thread(target=heavy)
    thread.start()
    deadline = time.monotonic() + 10
    while server.health()["in_flight"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # running, well before its 3 s timeout
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=15)
    exited_after = time.monotonic() - sent
    thread.join(timeout=10)
    assert exited_after < 8, f"exit took {exited_after:.2f} s"  # --shutdown-timeout 5
    response = outcome["r"]
    assert isinstance(response, httpx.Response) and response.status_code == 503, response
    assert "shutting down" in response.json()["error"]["message"]
    print(f"\nSIGTERM with a request in flight: exited {exited_after:.2f} s later, the client got 503")
