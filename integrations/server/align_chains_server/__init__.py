"""An OpenAI-compatible HTTP server for any aligned chat model of align_chains.

Run it with ``align-chains serve --strategy best-of-n --port 8000``; build the app in Python
with ``create_app(ServedModel(...))``.
"""

from __future__ import annotations

from align_chains_server.app import ServerLimits, create_app
from align_chains_server.service import DEFAULT_LIMITS, RequestError, ServedModel, resolve_reward_spec

__all__ = [
    "DEFAULT_LIMITS",
    "RequestError",
    "ServedModel",
    "ServerLimits",
    "create_app",
    "resolve_reward_spec",
]
