"""Command-line option values shared by ``align-chains chat`` and ``align-chains serve``.

One parser for ``-o KEY=VALUE`` so both commands read settings the same way.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)``: the value as JSON when it parses (8, true, [1, 2]), else
    the raw string; dashes in the key become underscores (``max-tokens`` -> ``max_tokens``).

    Raises ``argparse.ArgumentTypeError`` (argparse turns it into a usage error) without an ``=``.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value
