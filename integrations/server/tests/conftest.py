"""Fixtures: a tiny random policy on disk and two real server processes (open and strict)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_test_helpers import API_KEY, Server, launch_server, wait_ready

from align_chains.testing import tiny_policy


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, saved so ``--policy <dir>`` loads it like any model."""
    policy = tiny_policy()
    path = tmp_path_factory.mktemp("tiny-policy")
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_server_args(tiny_policy_dir) -> list[str]:
    return ["--policy", str(tiny_policy_dir), "--reward", "server_test_rewards:length", "-o", "max_tokens=8"]


@pytest.fixture(scope="session")
def servers(tiny_server_args, tmp_path_factory) -> Iterator[tuple[Server, Server]]:
    """Two servers, started side by side (their start-up overlaps):

    - open: no auth, four requests in flight;
    - strict: a bearer key from a file, one request in flight, a 2 s timeout, 20 kB bodies.
    """
    tmp = tmp_path_factory.mktemp("servers")
    key_file = tmp / "key"
    key_file.write_text(API_KEY + "\n")
    launched = [
        launch_server([*tiny_server_args, "--max-concurrency", "4"], tmp / "open.log"),
        launch_server(
            [
                *tiny_server_args,
                "--api-key-file",
                str(key_file),
                "--max-concurrency",
                "1",
                "--timeout",
                "2",
                "--max-body-bytes",
                "20000",
            ],
            tmp / "strict.log",
        ),
    ]
    try:
        yield tuple(wait_ready(s) for s in launched)
    finally:
        for s in launched:
            s.stop()


@pytest.fixture(scope="session")
def server(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="session")
def strict_server(servers) -> Server:
    return servers[1]
