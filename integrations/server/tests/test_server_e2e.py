"""`align-chains serve` on the embedded defaults answers a streaming request from the openai client."""

from __future__ import annotations

import openai
import pytest
from server_test_helpers import start_server


@pytest.mark.e2e
def test_serve_embedded_defaults_streams(tmp_path):
    server = start_server(["--max-concurrency", "2"], tmp_path / "serve.log", wait_s=300)
    try:
        c = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        stream = c.chat.completions.create(
            model="best-of-n",
            messages=[{"role": "user", "content": "Give me one tip for better sleep."}],
            max_tokens=16,
            seed=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"align_chains": {"n": 2}},
        )
        chunks = list(stream)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text.strip()
        ext = chunks[-1].model_extra["align_chains"]
        assert isinstance(ext["reward"], float)  # the MiniLM reward
        assert len(ext["candidates"]) == 2 and 0 < chunks[-1].usage.completion_tokens <= 2 * (16 + 1)
        assert chunks[-1].usage.completion_tokens == ext["compute"]["generated_tokens"]
    finally:
        server.stop()
