"""Moved to ``align_chains.models.messages`` (the bottom layer, so rewards can use it too).

Kept as a re-export for the modules and tests that import it from here.
"""

from align_chains.models.messages import to_conversation

__all__ = ["to_conversation"]
