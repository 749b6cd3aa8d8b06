"""Search over any LangChain chat model's API: ``RerankChatModel`` and its per-strategy searches.

- ``chat_model.py``: ``RerankChatModel``, the LangChain layer, and ``SEARCHES``, its dispatch table;
- ``search.py``: what a search is (``Search``) and the settings it reads;
- ``uniform.py``, ``adaptive.py``, ``darwin.py``: one search per strategy;
- ``calls.py``: the pool of concurrent calls and the tenacity retry rule (``is_transient``);
- ``results.py``: the chosen answer, its usage and metadata, shared by every search.
"""

from align_chains.chat_models.rerank.calls import TRANSIENT_STATUS, is_transient
from align_chains.chat_models.rerank.chat_model import SEARCHES, RerankChatModel

__all__ = ["SEARCHES", "TRANSIENT_STATUS", "RerankChatModel", "is_transient"]
