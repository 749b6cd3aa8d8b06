"""Ray scale-out for align_chains: align a whole dataset of prompts with any strategy."""

from __future__ import annotations

from align_chains_ray.pipeline import AlignActor, AlignRun, align_dataset, finished_ids

__all__ = ["AlignActor", "AlignRun", "align_dataset", "finished_ids"]
