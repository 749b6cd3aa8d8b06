"""Real server processes on 127.0.0.1 over a tiny random policy saved to disk.

The policy is a 2-layer random Llama with SmolLM2's real tokenizer (as in tests/conftest.py),
saved with ``save_pretrained`` so that ``align-chains serve --policy <dir>`` loads it like any
model directory. The reward is the Python function ``server_test_rewards:length``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def _smol_tokenizer():
    from align_chains.models.embedded import gguf_path
    from align_chains.settings import cache_dir
    from transformers import AutoTokenizer

    models = cache_dir() / "models"
    converted = next(models.glob("smollm2-135m-instruct-v*/tokenizer.json"), None) if models.is_dir() else None
    if converted is not None:
        return AutoTokenizer.from_pretrained(str(converted.parent))
    gguf = gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory) -> Path:
    """A tiny random Llama policy with SmolLM2's tokenizer and chat template, saved to a directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _smol_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-policy")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``align-chains serve`` process."""

    process: subprocess.Popen
    url: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.log.read_text()


def start_server(args: list[str], log: Path, *, env: dict[str, str] | None = None, wait_s: float = 120) -> Server:
    """Start ``python -m align_chains.cli serve ARGS`` on a free port; return once /health says ok."""
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(HERE), full_env.get("PYTHONPATH", "")) if p
    )
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "align_chains.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
    )  # fmt: skip
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if server.health()["status"] == "ok":
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"the server did not become ready in {wait_s} s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def tiny_server_args(tiny_policy_dir) -> list[str]:
    return ["--policy", str(tiny_policy_dir), "--reward", "server_test_rewards:length", "-o", "max_tokens=8"]


@pytest.fixture(scope="session")
def server(tiny_server_args, tmp_path_factory) -> Iterator[Server]:
    """An open server: no auth, four requests in flight."""
    running = start_server([*tiny_server_args, "--max-concurrency", "4"], tmp_path_factory.mktemp("log") / "a.log")
    yield running
    running.stop()


API_KEY = "sk-test-abc123-never-logged"


@pytest.fixture(scope="session")
def strict_server(tiny_server_args, tmp_path_factory) -> Iterator[Server]:
    """A guarded server: a bearer key from a file, one request in flight, a 1.5 s timeout."""
    tmp = tmp_path_factory.mktemp("strict")
    key_file = tmp / "key"
    key_file.write_text(API_KEY + "\n")
    running = start_server(
        [*tiny_server_args, "--api-key-file", str(key_file), "--max-concurrency", "1", "--timeout", "1.5",
         "--max-body-bytes", "20000"],  # fmt: skip
        tmp / "strict.log",
    )
    yield running
    running.stop()
