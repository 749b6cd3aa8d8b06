"""DARWIN as a LangChain chat model."""

from __future__ import annotations

from pydantic import Field

from align_chains.chat_models.settings import settings_base
from align_chains.strategies.darwin import Darwin


class DarwinChatModel(settings_base(Darwin)):  # type: ignore[misc]
    """Answers by evolving rewrites of the user's instruction under reward guidance (DARWIN).

    The defaults are the paper's: ``n=5`` mutations per cycle, replacement every ``m=40``
    tokens keeping the top ``k=3``, ``cycles=3``, temperature 0.7 and top-k 40. That is about
    16 answers' worth of decoding plus three mutation lists; on a CPU try
    ``cycles=1, m=16, max_tokens=64`` first. ``max_total_tokens`` and ``time_budget_s`` cap
    a request: the best answer so far is returned and ``response_metadata["budget_exhausted"]``
    names the cap that ran out.

    Args:
        top_k: Top-k sampling (paper: 40; 0 disables).
        **settings: ``Darwin``'s settings under the same names, defaults and rules (``n``, ``m``,
            ``k``, ``cycles``, ``mutation_max_tokens``, ``max_total_tokens``, ``time_budget_s``;
            see ``Darwin``), and the common settings of ``AlignedChatModel``.

    Examples:
        >>> from align_chains import DarwinChatModel
        >>> DarwinChatModel(cycles=1, m=16, max_tokens=64).invoke("Tips for better sleep?")  # doctest: +SKIP
        >>> DarwinChatModel(n=5, k=3).top_k
        40
    """

    top_k: int = Field(default=40, ge=0, description="Top-k sampling (paper: 40; 0 disables).")
