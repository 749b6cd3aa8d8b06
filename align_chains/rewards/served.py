"""A reward model served on its own, reached over HTTP.

Speaks the request and response shapes of the scoring endpoints teams already run:

- ``vllm-score``: vLLM's ``POST /score`` (cross-encoders and reward models started with
  ``vllm serve <model> --task score``): ``{"model", "text_1": [...], "text_2": [...]}`` scored
  pairwise, answered with ``{"data": [{"index", "score"}, ...]}``;
- ``vllm-classify``: vLLM's ``POST /classify`` (sequence classifiers): ``{"model", "input": [...]}``
  answered with ``{"data": [{"index", "probs": [...]}, ...]}``; the score is the probability of
  class ``label`` (default: the last class);
- ``tei-rerank``: Hugging Face Text Embeddings Inference's ``POST /rerank``:
  ``{"query", "texts": [...], "raw_scores": true}`` answered with ``[{"index", "score"}, ...]``
  (sorted by score, so results are put back in order by ``index``).

``align-chains serve-reward`` serves any local reward in the vLLM ``/score`` and TEI ``/rerank``
shapes, so policy replicas and reward replicas can run as separate processes.

Requests are batched (``batch_size`` pairs per call), time out (``timeout`` seconds), and are
retried with exponential back-off (tenacity) on connection errors, 429 and 5xx; a 4xx other than
429 is not retried. Every failure names the endpoint and what to check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import retry_if_exception

from align_chains.errors import InvalidInputError, RewardError
from align_chains.models.chat import Conversation
from align_chains.rewards.base import RewardModel
from align_chains.rewards.function import retrying

API_PATHS = {"vllm-score": "/score", "vllm-classify": "/classify", "tei-rerank": "/rerank"}
"""Each supported API and the path its endpoint is served at."""

_PATH_APIS = {"/score": "vllm-score", "/v1/score": "vllm-score", "/classify": "vllm-classify",
              "/rerank": "tei-rerank"}  # fmt: skip


def api_for_url(url: str, api: str | None = None) -> tuple[str, str]:
    """(endpoint URL, api) for a served reward: ``api`` given, or read from the URL's path.

    ``http://host:8000/score`` is vLLM's score API, ``.../classify`` vLLM's classify API,
    ``.../rerank`` TEI's rerank API; a bare ``http://host:port`` needs ``api=``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInputError(f"Served reward URL {url!r} must look like http://host:port/score.")
    path = parts.path.rstrip("/")
    if api is None:
        api = _PATH_APIS.get(path)
        if api is None:
            raise InvalidInputError(
                f"Served reward {url!r}: cannot tell the API from the path {path or '/'!r}. End the "
                f"URL with /score (vLLM), /classify (vLLM) or /rerank (TEI), or pass api= one of "
                f"{sorted(API_PATHS)}."
            )
        return url.rstrip("/"), api
    if api not in API_PATHS:
        raise InvalidInputError(f"Unknown served-reward api {api!r}; use one of {sorted(API_PATHS)}.")
    endpoint = url.rstrip("/") if path else url.rstrip("/") + API_PATHS[api]
    return endpoint, api


def conversation_text(conversation: Conversation) -> str:
    """A prompt as the one text a scoring endpoint takes: a single user turn is its content;
    a longer conversation is its turns as ``role: content`` lines."""
    if len(conversation) == 1 and conversation[0].get("role") == "user":
        return str(conversation[0].get("content") or "")
    return "\n".join(f"{turn.get('role')}: {turn.get('content') or ''}" for turn in conversation)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return False


class ServedReward(RewardModel):
    """Scores with a reward model behind an HTTP endpoint (vLLM ``/score`` or ``/classify``, TEI
    ``/rerank``, or ``align-chains serve-reward``).

    Args:
        url: The endpoint, e.g. ``http://localhost:8000/score``; the API is read from the path
            unless ``api`` is given (then a bare ``http://host:port`` gets that API's path).
        api: ``"vllm-score"``, ``"vllm-classify"`` or ``"tei-rerank"``.
        model: The ``model`` field vLLM requests carry (vLLM checks it when set).
        label: For ``vllm-classify``: which class's probability is the score (default last).
        template: For ``vllm-classify``: how a (prompt, response) becomes the one input text.
        batch_size: Pairs per HTTP request.
        timeout: Seconds per HTTP request.
        retries: Extra attempts on connection errors, 429 and 5xx (exponential back-off).
        headers: Extra headers, e.g. ``{"Authorization": "Bearer ..."}``.
        transport: An ``httpx`` transport to send requests through (tests, proxies, mounts).

    Examples:
        >>> from align_chains import load_reward
        >>> reward = load_reward("http://localhost:8001/score")  # doctest: +SKIP
        >>> reward.score(["Say hi"], ["Hello!"])  # doctest: +SKIP
        [0.62]
    """

    def __init__(
        self,
        url: str,
        *,
        api: str | None = None,
        model: str | None = None,
        label: int = -1,
        template: str = "{prompt}\n\n{response}",
        batch_size: int = 32,
        timeout: float = 30.0,
        retries: int = 3,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, self.api = api_for_url(url, api)
        if batch_size < 1 or timeout <= 0 or retries < 0:
            raise InvalidInputError(
                f"ServedReward needs batch_size >= 1, timeout > 0 and retries >= 0; got "
                f"batch_size={batch_size}, timeout={timeout}, retries={retries}."
            )
        if "{prompt}" not in template or "{response}" not in template:
            raise InvalidInputError(f"template must contain {{prompt}} and {{response}}; got {template!r}.")
        self.model, self.label, self.template = model, label, template
        self.batch_size, self.timeout, self.retries = batch_size, timeout, retries
        self.name = f"served:{self.api}@{self.url}"
        self._client = httpx.Client(timeout=timeout, headers=headers, transport=transport)
        self.requests_sent = 0

    def _score(self, prompts: list[Conversation], responses: list[str]) -> list[float]:
        texts = [conversation_text(p) for p in prompts]
        if self.api == "tei-rerank":
            return self._rerank(texts, responses)
        scores: list[float] = []
        for start in range(0, len(responses), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            scores.extend(self._chunk(texts[chunk], responses[chunk]))
        return scores

    def _chunk(self, prompts: list[str], responses: list[str]) -> list[float]:
        base = {"model": self.model} if self.model else {}
        if self.api == "vllm-score":
            body = self._post({**base, "text_1": prompts, "text_2": responses})
            return _indexed(body, len(responses), self.url, lambda item: item["score"])
        inputs = [self.template.format(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)]
        body = self._post({**base, "input": inputs})
        return _indexed(body, len(responses), self.url, lambda item: item["probs"][self.label])

    def _rerank(self, prompts: list[str], responses: list[str]) -> list[float]:
        """TEI ranks many texts against one query: one request per distinct prompt (and chunk)."""
        scores = [0.0] * len(responses)
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(i)
        for query, rows in groups.items():
            for start in range(0, len(rows), self.batch_size):
                part = rows[start : start + self.batch_size]
                body = self._post({"query": query, "texts": [responses[i] for i in part], "raw_scores": True})
                got = _indexed({"data": body}, len(part), self.url, lambda item: item["score"])
                for row, score in zip(part, got, strict=True):
                    scores[row] = score
        return scores

    def _post(self, payload: dict[str, Any]) -> Any:
        try:
            for attempt in retrying(self.retries, retry_if_exception(_retryable)):
                with attempt:
                    response = self._client.post(self.url, json=payload)
                    self.requests_sent += 1
                    response.raise_for_status()
                    return response.json()
        except httpx.HTTPStatusError as exc:
            raise RewardError(
                f"Served reward {self.url} answered {exc.response.status_code}: "
                f"{exc.response.text[:300]!r}. Check that api={self.api!r} matches the server "
                f"(vLLM --task score -> /score, a classifier -> /classify, TEI -> /rerank) and that "
                "model= names the served model."
            ) from exc
        except httpx.TransportError as exc:
            raise RewardError(
                f"Served reward {self.url} could not be reached after {self.retries + 1} attempts "
                f"({type(exc).__name__}: {exc}). Is the server running? Start one with "
                "`align-chains serve-reward --reward minilm --port 8001`, or raise timeout=."
            ) from exc
        except ValueError as exc:
            raise RewardError(
                f"Served reward {self.url} answered with a body that is not JSON: {exc}."
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


def _indexed(body: Any, expected: int, url: str, read: Callable[[dict[str, Any]], Any]) -> list[float]:
    """Scores from ``body["data"]`` put back in request order by each item's ``index``."""
    try:
        items: Sequence[dict[str, Any]] = body["data"]
        scores: list[Any] = [None] * expected
        for item in items:
            scores[int(item["index"])] = float(read(item))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RewardError(
            f"Served reward {url} answered in an unexpected shape ({type(exc).__name__}: {exc}); "
            f"body starts {str(body)[:200]!r}. Check the api= setting matches the server."
        ) from exc
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        raise RewardError(f"Served reward {url} returned no score for items {missing[:5]} of {expected}.")
    return scores
