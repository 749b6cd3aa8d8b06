"""Model loading: cache location, atomic conversion, offline errors, reuse, devices."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from align_chains.errors import InvalidInputError, ModelLoadError
from align_chains.models import embedded, load_policy
from align_chains.models.policy import Policy
from align_chains.settings import cache_dir, resolve_device, resolve_dtype


def test_cache_dir_respects_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("ALIGN_CHAINS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "align_chains"
    monkeypatch.setenv("ALIGN_CHAINS_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_interrupted_conversion_leaves_no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGN_CHAINS_CACHE", str(tmp_path))

    def crash(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        embedded.converted_policy_dir()
    models = tmp_path / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []

    calls = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "_convert_gguf", convert)
    target = embedded.converted_policy_dir()
    assert (target / "config.json").is_file()
    assert embedded.converted_policy_dir() == target
    assert len(calls) == 1  # converted once, then served from the cache


def test_local_directory_loads_and_is_reused(tmp_path, tiny_policy):
    tiny_policy.model.save_pretrained(tmp_path)
    tiny_policy.tokenizer.save_pretrained(tmp_path)
    first = load_policy(str(tmp_path), device="cpu")
    assert isinstance(first, Policy)
    assert first.chat_template and "<|im_start|>" in first.chat_template
    assert load_policy(str(tmp_path), device="cpu") is first
    assert load_policy(first) is first
    torch.testing.assert_close(
        first.model.get_input_embeddings().weight, tiny_policy.model.get_input_embeddings().weight
    )


def test_missing_specs_fail_fast_with_a_fix(monkeypatch):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_policy("./no/such/model")
    with pytest.raises(InvalidInputError):
        load_policy("   ")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="local path") as info:
        load_policy("nonexistent-org/nonexistent-model")
    assert "nonexistent-org/nonexistent-model" in str(info.value)
    assert time.perf_counter() - start < 10  # no 30 s of Hub retries


def test_unreachable_hub_fails_fast(monkeypatch):
    from align_chains.models import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        load_policy("nonexistent-org/nonexistent-model")


def test_policy_needs_a_chat_template(tiny_policy):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ModelLoadError, match="chat_template"):
        Policy(model=tiny_policy.model, tokenizer=NoTemplate(), name="bare")


def test_template_that_rejects_a_role_gives_a_clear_error(tiny_policy):
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    policy = Policy(
        model=tiny_policy.model, tokenizer=tiny_policy.tokenizer, name="strict", chat_template=strict
    )
    assert policy.render([{"role": "user", "content": "hi"}])
    with pytest.raises(InvalidInputError, match="System role not supported"):
        policy.render([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}])


def test_device_and_dtype_resolution():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(torch.float16, torch.device("cpu")) == torch.float16
    with pytest.raises(InvalidInputError, match="Unknown dtype"):
        resolve_dtype("float8ish", torch.device("cpu"))
    with pytest.raises(InvalidInputError, match="Unknown device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            resolve_device("cuda")
