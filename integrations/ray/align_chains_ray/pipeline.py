"""Align a dataset of prompts with any strategy on Ray Data, resumably.

``align_dataset`` streams the prompts through ``map_batches`` over a pool of ``AlignActor``s
(each loads one policy and one reward, once) and writes one output row per prompt, with the
chosen answer, its reward and the compute counters, as JSONL or Parquet files in a directory.
Rows already there (without an error) are skipped on the next run, so a crashed job resumes
where it stopped: Ray writes each block's file when the block is done.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from align_chains.cancellation import Cancelled, cancel_scope
from align_chains.chat_models import chat_model_class
from align_chains.engine.counters import ComputeCounters
from align_chains.errors import InvalidInputError

COUNTER_FIELDS = tuple(ComputeCounters.__dataclass_fields__)
OUTPUT_COLUMNS = (
    "id", "prompt", "response", "reward", "finish_reason", "strategy", "candidates", "error",
    *(f"compute_{name}" for name in COUNTER_FIELDS),
)  # fmt: skip


class AlignActor:
    """A Ray actor (``map_batches`` callable class) holding one aligned chat model, loaded once.

    Each call runs the strategy on the whole batch in one batched run; if that run fails, the
    rows are retried one by one so a single bad prompt only fails its own row (with ``error``).
    With ``time_budget_s`` each batch runs under a cancellation token with that deadline: rows
    still running when it passes stop at their next step and are written with a ``Cancelled``
    error, so a resumed run redoes exactly them.
    """

    def __init__(
        self,
        strategy: str,
        settings: dict[str, Any],
        system: str | None = None,
        time_budget_s: float | None = None,
    ) -> None:
        self.model = chat_model_class(strategy)(**settings)
        self.system = system
        self.time_budget_s = time_budget_s
        self.model.load()

    def _conversation(self, prompt: str) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": self.system}] if self.system else []
        return [*turns, {"role": "user", "content": str(prompt)}]

    def _run(self, prompts: list[str]) -> list[Any]:
        """One batched run; on failure each row alone, except once the budget is spent."""
        try:
            return self.model.run_strategy([self._conversation(p) for p in prompts])
        except Cancelled as exc:
            return [exc] * len(prompts)
        except Exception:
            results: list[Any] = []
            for prompt in prompts:
                try:
                    (result,) = self.model.run_strategy([self._conversation(prompt)])
                    results.append(result)
                except Exception as exc:
                    results.append(exc)
            return results

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        ids, prompts = list(batch["id"]), [str(p) for p in batch["prompt"]]
        with cancel_scope(self.time_budget_s):
            results = self._run(prompts)
        out: dict[str, list[Any]] = {name: [] for name in OUTPUT_COLUMNS}
        for row_id, prompt, result in zip(ids, prompts, results, strict=True):
            failed = isinstance(result, Exception)
            counters = {} if failed else result.counters.as_dict()
            # a RewardError keeps the text (a cancelled batch's rows are simply redone on resume)
            partial = (
                getattr(result, "partial", None) if failed and not isinstance(result, Cancelled) else None
            )
            values = {
                "id": str(row_id),
                "prompt": prompt,
                "response": (partial[0].text if partial else None) if failed else result.text,
                "reward": None if failed or result.reward is None else float(result.reward),
                "finish_reason": None if failed else result.finish_reason,
                "strategy": None if failed else result.strategy,
                "candidates": None if failed else len(result.candidates),
                "error": f"{type(result).__name__}: {result}" if failed else None,
                **{f"compute_{k}": (float(counters[k]) if k in counters else None) for k in COUNTER_FIELDS},
            }
            for name in OUTPUT_COLUMNS:
                out[name].append(values[name])
        return out


def finished_ids(output_dir: str | Path) -> set[str]:
    """Ids with an error-free row in ``output_dir`` (JSONL ``*.json``/``*.jsonl`` or ``*.parquet``).

    Unreadable tails (a file cut off by a crash) are skipped: their rows run again.
    """
    done: set[str] = set()
    root = Path(output_dir)
    if not root.is_dir():
        return done
    for path in sorted(root.rglob("*")):
        if path.suffix in (".json", ".jsonl"):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("error") is None and "id" in row:
                    done.add(str(row["id"]))
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path, columns=["id", "error"])
            except Exception:
                continue
            for row_id, error in zip(table["id"].to_pylist(), table["error"].to_pylist(), strict=True):
                if error is None:
                    done.add(str(row_id))
    return done


@dataclass(frozen=True)
class AlignRun:
    """What one ``align_dataset`` call did."""

    total: int
    skipped: int
    processed: int
    output_dir: str


def align_dataset(
    prompts: Any,
    output_dir: str | Path,
    *,
    strategy: str = "best-of-n",
    settings: dict[str, Any] | None = None,
    system: str | None = None,
    output_format: Literal["jsonl", "parquet"] = "jsonl",
    batch_size: int = 8,
    actors: int = 1,
    num_cpus_per_actor: float = 1,
    num_gpus_per_actor: float = 0,
    resume: bool = True,
    time_budget_s: float | None = None,
) -> AlignRun:
    """Run ``strategy`` over every prompt and write rows with rewards and counters to ``output_dir``.

    ``prompts``: a ``ray.data.Dataset`` with ``id`` and ``prompt`` columns, or an iterable of
    strings (ids are their positions) or of ``{"id", "prompt"}`` dicts. ``settings`` are the
    chat model's (policy, reward, n, max_tokens, ...); they must be picklable (a reward function
    defined at module level or a spec string). With ``resume``, ids already written without an
    error are skipped. ``time_budget_s`` caps each batch's wall time: rows cut off are written
    with a ``Cancelled`` error and redone by the next run (see ``AlignActor``).
    """
    import ray

    if output_format not in ("jsonl", "parquet"):
        raise InvalidInputError(f"output_format must be 'jsonl' or 'parquet', got {output_format!r}.")
    if batch_size < 1 or actors < 1:
        raise InvalidInputError(f"batch_size and actors must be >= 1, got {batch_size} and {actors}.")
    settings = dict(settings or {})
    cls = chat_model_class(strategy)  # unknown strategy: fails here, before Ray starts anything
    cls(**settings)  # settings validated before any actor loads a model

    done = finished_ids(output_dir) if resume else set()
    if isinstance(prompts, ray.data.Dataset):
        dataset = prompts
        missing = {"id", "prompt"} - set(dataset.columns())
        if missing:
            raise InvalidInputError(
                f"The dataset needs 'id' and 'prompt' columns; it lacks {sorted(missing)}."
            )
        total = dataset.count()
        if done:
            dataset = dataset.filter(lambda row: str(row["id"]) not in done)
        todo = dataset.count() if done else total
    else:  # in-memory prompts: skip finished ones here, without a Ray pass
        rows = _rows(prompts)
        total = len(rows)
        rows = [r for r in rows if r["id"] not in done]
        todo = len(rows)
        dataset = ray.data.from_items(rows) if rows else None
    if todo:
        aligned = dataset.map_batches(
            AlignActor,
            fn_constructor_kwargs={
                "strategy": strategy,
                "settings": settings,
                "system": system,
                "time_budget_s": time_budget_s,
            },
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=num_cpus_per_actor,
            num_gpus=num_gpus_per_actor,
            batch_format="numpy",
        )
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if output_format == "jsonl":
            aligned.write_json(str(output_dir))
        else:
            aligned.write_parquet(str(output_dir))
    return AlignRun(total=total, skipped=total - todo, processed=todo, output_dir=str(output_dir))


def _rows(prompts: Iterable[Any]) -> list[dict[str, str]]:
    rows = []
    for i, item in enumerate(prompts):
        if isinstance(item, str):
            rows.append({"id": str(i), "prompt": item})
        elif isinstance(item, dict) and "prompt" in item:
            rows.append({"id": str(item.get("id", i)), "prompt": str(item["prompt"])})
        else:
            raise InvalidInputError(f"Prompt {i} must be a string or a dict with 'prompt'; got {item!r}.")
    if len({r["id"] for r in rows}) != len(rows):
        raise InvalidInputError("Prompt ids must be unique: resuming relies on them.")
    return rows
