"""The GPU benchmark's guard: without CUDA, benchmarks/gpu.sh stops at once and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_script_without_cuda_fails_fast_with_a_clear_message(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "no CUDA device is visible" in done.stderr
    assert "--device cpu --smoke" in done.stderr  # it says how to test the script without a GPU
    assert not (tmp_path / "out").exists()  # nothing was run or written


def test_gpu_driver_has_the_same_guard(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_bench

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_bench.main([str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_decode_limit_section_runs_on_cpu_in_tiny_shapes(tiny_policy):
    """The three shapes x three batch sizes, engine and static-cache generate against the bound."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_decode

    ctx = {"policy": tiny_policy, "device": "cpu", "dtype": "fp32", "smoke": True}
    section = gpu_decode.decode_limit(ctx, None)
    rows = section["rows"]
    assert [(r["shape"], r["batch"]) for r in rows] == [
        (shape, batch) for shape in gpu_decode.SHAPES for batch in gpu_decode.BATCHES
    ]
    assert section["bandwidth_gb_s"] > 0
    for r in rows:
        assert r["engine_ms"] > 0 and r["generate_static_ms"] >= 0 and r["bound_ms"] > 0
    # the bound grows with the KV cache a bigger batch must read
    assert rows[2]["bound_ms"] > rows[0]["bound_ms"]
    text = gpu_decode.table(section)
    assert text.count("\n| ") == 1 + len(rows) + 1  # header, separator, one line per row
    assert "llama3.1-8b | 32 |" in text


def test_the_bound_counts_weights_once_and_the_kv_cache_per_row(tiny_policy):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_decode

    model = tiny_policy.model
    config = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: the table once
    head_dim = config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4  # fp32 bytes per token
    assert gpu_decode.bound_bytes(model, 8, 100) == weights + kv * 100 * 8
