"""The converted embedded-policy cache is verified against its manifest: a corrupted,
truncated or half-written conversion is detected and rebuilt, never loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align_chains.models import embedded

WEIGHTS = bytes(range(256)) * 64  # stands in for model.safetensors


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """A conversion that writes a config and 'weights', counting its calls (no GGUF needed)."""
    monkeypatch.setenv("ALIGN_CHAINS_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "gguf_path", lambda: tmp_path / "unused.gguf")
    calls: list[Path] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes(WEIGHTS)

    monkeypatch.setattr(embedded, "_convert_gguf", convert)
    return calls


def test_an_intact_cache_is_converted_once_and_reused(fake_conversion):
    target = embedded.converted_policy_dir()
    assert embedded.cache_problem(target) is None
    manifest = json.loads((target / embedded.MANIFEST).read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert embedded.converted_policy_dir() == target
    assert len(fake_conversion) == 1


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new modification time


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda t: (t / "model.safetensors").write_bytes(WEIGHTS[:1000]), "bytes, expected"),
        (lambda t: _flip_one_byte(t / "model.safetensors"), "SHA-256"),
        (lambda t: (t / "model.safetensors").unlink(), "missing"),
        (lambda t: (t / embedded.MANIFEST).unlink(), "no readable manifest"),
        (lambda t: (t / embedded.MANIFEST).write_text('{"files": {"config.json": '), "no readable manifest"),
    ],
    ids=["truncated", "corrupted", "file-missing", "half-written", "manifest-cut"],
)
def test_a_damaged_cache_is_detected_and_rebuilt(fake_conversion, damage, words):
    target = embedded.converted_policy_dir()
    damage(target)
    assert words in embedded.cache_problem(target)
    assert embedded.converted_policy_dir() == target
    assert len(fake_conversion) == 2  # rebuilt, not loaded
    assert embedded.cache_problem(target) is None
    assert (target / "model.safetensors").read_bytes() == WEIGHTS


def test_a_same_content_rewrite_is_accepted_after_hashing(fake_conversion):
    target = embedded.converted_policy_dir()
    (target / "model.safetensors").write_bytes(WEIGHTS)  # touched, content unchanged
    assert embedded.cache_problem(target) is None
    assert embedded.converted_policy_dir() == target and len(fake_conversion) == 1


def test_a_conversion_dying_midway_leaves_nothing_loadable(fake_conversion, monkeypatch, tmp_path):
    def dies(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(WEIGHTS[:10])
        raise MemoryError("killed mid-conversion")

    monkeypatch.setattr(embedded, "_convert_gguf", dies)
    with pytest.raises(MemoryError):
        embedded.converted_policy_dir()
    target = tmp_path / "models" / f"{embedded.EMBEDDED_POLICY}-v{embedded._CONVERSION_VERSION}"
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []
