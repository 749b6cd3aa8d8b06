"""Process-wide defaults: the cache directory and automatic device / dtype choice."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from align_chains.errors import InvalidInputError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def cache_dir() -> Path:
    """Where converted models live: $ALIGN_CHAINS_CACHE, else $XDG_CACHE_HOME/align_chains."""
    override = os.environ.get("ALIGN_CHAINS_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "align_chains"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when present, else CPU; an explicit choice wins."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(
            f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or None for automatic."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"device={device!r} was requested but CUDA is not available on this machine: "
            "pass device='cpu' or leave device unset."
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA that supports it, fp32 otherwise; an explicit choice wins."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise InvalidInputError(
            f"Unknown dtype {dtype!r}: use one of {sorted(_DTYPES)} or None for automatic."
        ) from None
