"""Rewards the test servers load by ``--reward server_test_rewards:<name>``."""

from __future__ import annotations

import time

SLOW_MARKER = "[slow]"
SLOW_SECONDS = 3.0


CRAWL_MARKER = "[crawl]"
CRAWL_SECONDS = 0.05


def length(prompt: str, response: str) -> float:
    """Longer answers score higher; a prompt containing ``[slow]`` holds the worker for a while,
    one containing ``[crawl]`` a little per scored text (a long request on any machine, yet
    cancelled within one reward call)."""
    if SLOW_MARKER in prompt:
        time.sleep(SLOW_SECONDS)
    if CRAWL_MARKER in prompt:
        time.sleep(CRAWL_SECONDS)
    return float(len(response))


BOOM_MARKER = "[boom]"


def length_or_boom(prompt: str, response: str) -> float:
    """Like ``length``, but raises for a prompt containing ``[boom]`` (a reward failing mid-batch)."""
    if BOOM_MARKER in prompt:
        raise RuntimeError("the reward service rejected this prompt")
    return float(len(response))
