"""Resolve a model spec (local directory or Hugging Face id) to a local directory, offline-first.

transformers' own loader retries an unreachable Hub for ~30 s before failing; we check the
local cache first and probe the Hub once with a short timeout, so a missing model fails fast
with an error that says what to do.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from align_chains.errors import ModelLoadError

_WEIGHT_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.py",
    "tokenizer*",
    "1_Pooling/*",
]


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the Hub endpoint: no retries, no long hang."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_dir(spec: str, *, what: str) -> Path:
    """Return a local directory holding ``spec``'s files, downloading only if the Hub answers."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{what} spec {spec!r} is a file, not a model directory.")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(
            f"{what} spec {spec!r} looks like a path, but no such directory exists. "
            "Check the path, or pass a Hugging Face model id."
        )
    try:
        return Path(snapshot_download(spec, local_files_only=True, allow_patterns=_WEIGHT_PATTERNS))
    except HFValidationError as exc:
        raise ModelLoadError(
            f"{what} spec {spec!r} is neither an existing directory nor a valid Hugging Face "
            f"model id ({exc}). Pass a local model directory or an id like 'org/model'."
        ) from None
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if _offline() or not hub_reachable():
        reason = "offline mode is on" if _offline() else "the Hugging Face Hub cannot be reached"
        raise ModelLoadError(
            f"Cannot load {what} {spec!r}: it is not a local directory, it is not in the Hugging "
            f"Face cache, and {reason}. Download it on a machine with network access "
            f"(`hf download {spec} --local-dir ./models/{spec.split('/')[-1]}`) and pass that "
            "local path instead, or use the embedded default."
        )
    try:
        return Path(snapshot_download(spec, allow_patterns=_WEIGHT_PATTERNS))
    except Exception as exc:  # network and auth errors from the Hub client
        raise ModelLoadError(
            f"Cannot download {what} {spec!r} from the Hugging Face Hub: {exc}. "
            "Check the id (and HF_TOKEN for gated models), or pass a local directory."
        ) from exc
