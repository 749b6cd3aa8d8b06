"""What the benchmark scripts share: machine metadata, the common options, medians and ratios,
interleaved rounds, the JSON writer and the report lines.

Run the scripts from the repository root (``python benchmarks/<script>.py``): this folder is then
on ``sys.path`` and ``from common import ...`` finds this module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def machine(**extra: Any) -> dict[str, Any]:
    """The one shape of machine metadata every result file records (``extra``: the script's own,
    e.g. the policy's device and dtype, library versions)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info | extra


def machine_line(info: dict[str, Any]) -> str:
    """One report line naming the machine a run measured."""
    device = f", {info['cuda_device']}" if info.get("cuda_device") else ""
    return (
        f"# {info['processor']}, {info['cpus']} CPUs{device}, torch {info['torch']} "
        f"({info['torch_threads']} threads), python {info['python']}"
    )


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_common_options(
    parser: argparse.ArgumentParser,
    *,
    repeats: int | None = None,
    seed: int | None = 0,
    json_help: str = "write the results here",
    repeats_help: str = "timed rounds",
    seed_help: str = "sampling seed",
) -> None:
    """``--json PATH`` always; ``--seed`` unless ``seed`` is None; ``--repeats`` when given a default."""
    if repeats is not None:
        parser.add_argument(
            "--repeats", type=positive_int, default=repeats, help=f"{repeats_help} (default {repeats})"
        )
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed, help=f"{seed_help} (default {seed})")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help=json_help)


def interleaved(repeats: int, ways: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(repeat, way): one untimed warm-up round (repeat -1), then ``repeats`` timed rounds, the
    ways interleaved within each round so machine noise hits all of them alike."""
    ways = list(ways)
    for repeat in range(-1, repeats):
        for way in ways:
            yield repeat, way


def spread(values: Iterable[float], unit: str = "s") -> dict[str, float]:
    """``{"median_<unit>", "min_<unit>", "max_<unit>"}`` of some timings."""
    values = list(values)
    return {
        f"median_{unit}": statistics.median(values),
        f"min_{unit}": min(values),
        f"max_{unit}": max(values),
    }


def medians(rows: Sequence[dict[str, Any]], keys: Iterable[str]) -> dict[str, float]:
    """The median of each key over rows."""
    return {key: statistics.median(float(row[key]) for row in rows) for key in keys}


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 (a report line, not a crash)."""
    return numerator / denominator if denominator else float("nan")


def win_rate(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """The share of paired items where ours is higher (a tie counts one half)."""
    return statistics.fmean(
        1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs, strict=True)
    )


def ratio_line(slow: str, fast: str, value: float, target: float | None = None) -> str:
    """``median(slow) / median(fast) = 2.31x  (target >= 2x)``."""
    goal = f"  (target >= {target:g}x)" if target is not None else ""
    return f"median({slow}) / median({fast}) = {value:.2f}x{goal}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "---") -> str:
    """A Markdown table (the form the docs quote)."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join([align] * len(header)) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path | str | None, payload: dict[str, Any], *, indent: int = 2) -> None:
    """Write a result file (parents created); nothing when ``path`` is None (no ``--json``)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=indent, default=str) + "\n")
    print(f"results written to {path}")


@contextmanager
def status(message: str) -> Iterator[None]:
    """Print ``message ...`` and, when the block ends, the seconds it took."""
    print(f"  {message} ...", end="", flush=True)
    start = time.perf_counter()
    yield
    print(f" {time.perf_counter() - start:.2f} s", flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the wall seconds it took."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
