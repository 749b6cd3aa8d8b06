"""A local Ray cluster (2 CPUs) and a tiny random policy on disk, for the Ray pipeline tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from align_chains.testing import tiny_policy


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_policy_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved to a directory: each actor loads it like any model directory."""
    policy = tiny_policy()
    path = tmp_path_factory.mktemp("ray-tiny-policy")
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    return path
