"""Fixtures: a tiny random policy on disk and two real server processes (open and strict)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_test_helpers import API_KEY, Server, launch_server, smol_tokenizer, wait_ready


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory) -> Path:
    """A tiny random Llama policy with SmolLM2's tokenizer and chat template, saved to a directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smol_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-policy")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_server_args(tiny_policy_dir) -> list[str]:
    return ["--policy", str(tiny_policy_dir), "--reward", "server_test_rewards:length", "-o", "max_tokens=8"]


@pytest.fixture(scope="session")
def servers(tiny_server_args, tmp_path_factory) -> Iterator[tuple[Server, Server]]:
    """Two servers, started side by side (their start-up overlaps):

    - open: no auth, four requests in flight;
    - strict: a bearer key from a file, one request in flight, a 1.5 s timeout, 20 kB bodies.
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
                "1.5",
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
