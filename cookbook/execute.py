"""Execute cookbook notebooks in place and stamp them with the hash of the code they ran.

Run:  python cookbook/execute.py                  # every notebook in cookbook/
      python cookbook/execute.py cookbook/01_quickstart.ipynb

Each notebook runs top to bottom in a fresh kernel with cookbook/ as its working directory; its
outputs are saved in the file, and ``metadata["align_chains"]`` records ``code_hash`` (the hash
of its code cells, see ``code_hash``) and the seconds it took. ``tests/test_cookbook.py`` checks
that the stamp still matches the code, so an edited notebook whose saved outputs came from
older code fails CI until it is executed again with this script.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import time
from pathlib import Path

import nbformat

COOKBOOK = Path(__file__).resolve().parent
STAMP = "align_chains"
CELL_TIMEOUT_S = 600


def code_hash(notebook: nbformat.NotebookNode) -> str:
    """SHA-256 over the sources of the code cells, in order (outputs and markdown do not count)."""
    digest = hashlib.sha256()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.strip().encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()


def notebooks() -> list[Path]:
    """The cookbook's notebooks, in reading order (their names start with a number)."""
    return sorted(COOKBOOK.glob("*.ipynb"))


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_notebook(notebook: nbformat.NotebookNode, timeout_s: int = CELL_TIMEOUT_S) -> tuple[float, float]:
    """Execute ``notebook`` in place in a fresh kernel (cwd: cookbook/).

    Returns (wall seconds, CPU seconds of the kernel and its children): on a shared machine the
    CPU seconds say more about what the notebook costs than the wall time. Raises nbclient's
    ``CellExecutionError`` at the first cell that fails.
    """
    from nbclient import NotebookClient

    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    NotebookClient(
        notebook, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(COOKBOOK)}}
    ).execute()
    return time.perf_counter() - start, _children_cpu_seconds() - cpu_start


def execute_in_place(path: Path) -> tuple[float, float]:
    """Execute the notebook at ``path``, stamp it and write it back; return (wall, CPU) seconds."""
    notebook = nbformat.read(path, as_version=4)
    seconds, cpu = run_notebook(notebook)
    notebook.metadata[STAMP] = {
        "code_hash": code_hash(notebook),
        "executed_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
    }
    nbformat.write(notebook, path)
    return seconds, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="Notebooks to execute (default: all).")
    args = parser.parse_args(argv)
    paths = args.paths or notebooks()
    for path in paths:
        if path.suffix != ".ipynb" or not path.is_file():
            parser.error(f"{path} is not a notebook file (.ipynb).")
    failed = []
    for path in paths:
        try:
            seconds, cpu = execute_in_place(path)
        except Exception as exc:  # report it and go on: one broken notebook should not hide the rest
            failed.append(path.name)
            print(f"{path.name}: FAILED, not saved\n{exc}", flush=True)
            continue
        print(f"{path.name}: {seconds:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
