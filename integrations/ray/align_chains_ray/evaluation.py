"""``align-chains eval --ray``: an evaluation's cells on Ray Data workers, resumable, same JSON.

Each pending chunk (one strategy setting and up to ``batch_size`` prompts: what a local run
hands one strategy run) is one row of a Ray dataset; ``map_batches`` sends the rows to a pool of
``EvalActor``s, each loading the policy and both rewards once (``EvalJob.load``) and running the
chunk with ``run_cells``, the local run's own code. The driver takes each chunk's cells back as
it finishes, in order, and ``evaluate`` saves the results file after each one, so an
interrupted run resumes from the file exactly like a local run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from align_chains.errors import AlignChainsError, InvalidInputError
from align_chains.evaluation.prompts import EvalPrompt
from align_chains.evaluation.runner import CellRunner, ChunkOutcome, EvalJob, chunk_error, run_cells
from align_chains.evaluation.specs import StrategySetting


class EvalActor:
    """A Ray actor (``map_batches`` callable class): the policy and both rewards, loaded once;
    each row is one chunk, answered by one strategy run and scored like a local run's."""

    def __init__(self, job: EvalJob, settings: list[StrategySetting]) -> None:
        self.common, self.reward, self.holdout = job.load()
        self.settings = settings
        self.models: dict[int, Any] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        outcomes = []
        for index, prompts in zip(batch["setting"], batch["prompts"], strict=True):
            setting = self.settings[int(index)]
            chunk = [EvalPrompt(**p) for p in json.loads(str(prompts))]
            model = self.models.get(int(index))
            if model is None:
                model = self.models[int(index)] = setting.build(**self.common)
            try:
                cells, error = run_cells(setting, model, chunk, self.reward, self.holdout), None
            except AlignChainsError as exc:  # as locally: one setting failing does not stop the others
                cells, error = [], chunk_error(setting, chunk, exc)
            outcomes.append(json.dumps({"cells": cells, "error": error, "size": len(chunk)}))
        return {"outcome": outcomes}


def run_on_ray(
    *, actors: int = 1, num_cpus_per_actor: float = 1, num_gpus_per_actor: float = 0
) -> CellRunner:
    """A ``runner`` for ``evaluate``: the cells on ``actors`` Ray actors (Ray must be initialised,
    or is started locally). Each actor holds its own policy and rewards."""
    if actors < 1:
        raise InvalidInputError(f"--ray-actors must be at least 1, got {actors}.")

    def runner(todo: list[tuple[StrategySetting, list[EvalPrompt]]], job: EvalJob) -> Iterator[ChunkOutcome]:
        import ray

        if not isinstance(job.policy, str):
            raise InvalidInputError(
                "eval on Ray needs the policy as a spec (a model id, directory or embedded name), "
                "not a loaded Policy: each worker loads its own."
            )
        rows = [
            {
                "setting": i,
                "prompts": json.dumps([p.as_dict() for p in pending[start : start + job.batch_size]]),
            }
            for i, (_, pending) in enumerate(todo)
            for start in range(0, len(pending), job.batch_size)
        ]
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the local run's order of cells
        outcomes = ray.data.from_items(rows).map_batches(
            EvalActor,
            fn_constructor_kwargs={"job": job, "settings": [s for s, _ in todo]},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=num_cpus_per_actor,
            num_gpus=num_gpus_per_actor,
            batch_format="numpy",
        )
        for row in outcomes.iter_rows():
            outcome = json.loads(row["outcome"])
            yield ChunkOutcome(outcome["cells"], outcome["error"], outcome["size"])

    return runner


def cli_runner(actors: int, address: str | None) -> CellRunner:
    """What ``align-chains eval --ray`` uses (the ``align_chains.eval_runners`` entry point
    ``ray``): joins ``address`` (or starts a local cluster) and runs on ``actors`` actors."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    return run_on_ray(actors=actors)
