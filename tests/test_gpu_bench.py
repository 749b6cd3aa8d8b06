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
