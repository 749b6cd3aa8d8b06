"""``align-chains serve-reward``: one local reward model served in the shapes scoring servers use.

``POST /score`` (and ``/v1/score``) speaks vLLM's score API (``text_1`` against ``text_2``: one to
one, one to many, or pairwise lists); ``POST /rerank`` speaks Text Embeddings Inference's rerank API.
So ``ServedReward`` (``load_reward("http://host:port/score")``) reaches this process exactly as
it reaches vLLM or TEI, and a team can run policy replicas and reward replicas separately.

Concurrent requests are scored together: a request joins a batch that is scored in one
``RewardModel.score`` call (up to ``max_batch`` pairs, gathered for at most ``window_ms``).

    align-chains serve-reward --reward minilm --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import math
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from align_chains.errors import AlignChainsError
from align_chains.rewards import RewardModel, load_reward
from align_chains_server.cli import is_loopback, read_api_key

MAX_PAIRS = 4096
"""Pairs one request may send (a bigger batch is the client's to split)."""
MAX_TEXT = 200_000
"""Characters per text."""

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Texts = Annotated[list[Text], Field(min_length=1, max_length=MAX_PAIRS)]


class ScoreRequest(BaseModel):
    """vLLM's score request: ``text_1`` (queries) against ``text_2`` (documents)."""

    model: str | None = None
    text_1: Text | Texts
    text_2: Text | Texts


class RerankRequest(BaseModel):
    """TEI's rerank request; ``raw_scores`` false maps scores through a sigmoid, as TEI does."""

    query: Text
    texts: Texts
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None


def score_pairs(request: ScoreRequest) -> tuple[list[str], list[str]]:
    """(prompts, responses) of a score request, following vLLM's 1:1, 1:N and N:N rules."""
    first = [request.text_1] if isinstance(request.text_1, str) else request.text_1
    second = [request.text_2] if isinstance(request.text_2, str) else request.text_2
    if len(first) == 1:
        return first * len(second), second
    if len(first) != len(second):
        raise HTTPException(
            400, f"text_1 has {len(first)} items and text_2 {len(second)}: send one text_1, or equal lengths."
        )
    return first, second


@dataclass
class _Pending:
    prompts: list[str]
    responses: list[str]
    future: asyncio.Future[list[float]] = field(repr=False)


class RewardBatcher:
    """Scores concurrent requests together: one ``reward.score`` call per gathered batch."""

    def __init__(self, reward: RewardModel, window_s: float = 0.005, max_batch: int = 256) -> None:
        self.reward, self.window_s, self.max_batch = reward, window_s, max_batch
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches = 0
        self._worker: asyncio.Task[None] | None = None

    async def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(prompts, responses, future))
        return await future

    async def _gather(self) -> list[_Pending]:
        batch = [await self.queue.get()]
        size, deadline = len(batch[0].responses), time.monotonic() + self.window_s
        while size < self.max_batch:
            try:
                item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
            batch.append(item)
            size += len(item.responses)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            prompts = [p for item in batch for p in item.prompts]
            responses = [r for item in batch for r in item.responses]
            try:
                scores = await asyncio.to_thread(self.reward.score, prompts, responses)
            except Exception as exc:  # every waiting request gets the failure, with its message
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(scores[start : start + len(item.responses)])
                start += len(item.responses)


def create_reward_app(
    reward: RewardModel,
    *,
    model_name: str,
    api_key: str | None = None,
    window_ms: float = 5.0,
    max_batch: int = 256,
) -> FastAPI:
    """The reward app: ``/score``, ``/v1/score``, ``/rerank``, ``/health``, ``/v1/models``."""
    app = FastAPI(title="align-chains reward server")
    app.state.batcher = RewardBatcher(reward, window_ms / 1000, max_batch)

    def authorised(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
            raise HTTPException(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.")

    guard = [Depends(authorised)]

    async def scores(prompts: list[str], responses: list[str]) -> list[float]:
        try:
            return await app.state.batcher.score(prompts, responses)
        except AlignChainsError as exc:
            raise HTTPException(500, f"Reward {reward.name!r} failed: {exc}") from exc

    @app.post("/score", dependencies=guard)
    @app.post("/v1/score", dependencies=guard)
    async def score(body: ScoreRequest) -> dict[str, Any]:
        if body.model is not None and body.model != model_name:
            raise HTTPException(
                404, f"The model {body.model!r} is not served here; this serves {model_name!r}."
            )
        values = await scores(*score_pairs(body))
        data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(values)]
        created = int(time.time())
        return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": created, "model": model_name,
                "data": data}  # fmt: skip

    @app.post("/rerank", dependencies=guard)
    async def rerank(body: RerankRequest) -> list[dict[str, Any]]:
        values = await scores([body.query] * len(body.texts), body.texts)
        if not body.raw_scores:
            values = [1 / (1 + math.exp(-v)) for v in values]
        ranked = sorted(range(len(values)), key=lambda i: -values[i])
        return [{"index": i, "score": values[i], **({"text": body.texts[i]} if body.return_text else {})}
                for i in ranked]  # fmt: skip

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=guard)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "align-chains"}]}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": exc.detail, "code": exc.status_code}}, status_code=exc.status_code
        )

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align-chains serve-reward",
        description="Serve a reward model over vLLM's /score and TEI's /rerank APIs.",
    )
    parser.add_argument(
        "--reward", default="minilm", help="A reward spec, as for load_reward (default minilm)."
    )
    parser.add_argument("--model-name", help="The name clients send as 'model' (default: the reward spec).")
    parser.add_argument("--host", default="127.0.0.1", help="Bind address (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--device", help="cpu, cuda, ... (automatic by default).")
    parser.add_argument("--dtype", help="bf16, fp16, fp32 for model rewards (automatic by default).")
    parser.add_argument(
        "--batch-window-ms", type=float, default=5.0, help="Gather concurrent requests this long."
    )
    parser.add_argument("--max-batch", type=int, default=256, help="Pairs scored in one reward call at most.")
    parser.add_argument(
        "--api-key-env", default="ALIGN_CHAINS_API_KEY", help="Environment variable with the key."
    )
    parser.add_argument("--api-key-file", type=Path, help="File whose first line is the key.")
    parser.add_argument(
        "--allow-unauthenticated", action="store_true", help="Allow a public --host without a key."
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Load the reward, then serve it with uvicorn until stopped."""
    import uvicorn

    args = build_parser().parse_args(argv)
    fail = "align-chains serve-reward: error:"
    if args.batch_window_ms < 0 or args.max_batch < 1:
        print(f"{fail} --batch-window-ms must be >= 0 and --max-batch >= 1.", file=sys.stderr)
        return 2
    try:
        api_key = read_api_key(args.api_key_env, args.api_key_file)
        if not api_key and not is_loopback(args.host) and not args.allow_unauthenticated:
            raise AlignChainsError(
                f"--host {args.host} is reachable from other machines and no API key is set: set one "
                f"(--api-key-file or {args.api_key_env}), bind 127.0.0.1, or pass --allow-unauthenticated."
            )
        reward = load_reward(args.reward, device=args.device, dtype=args.dtype)
        reward.score(["warm-up"], ["ready"])  # load weights before binding the port
    except (AlignChainsError, OSError, ValueError) as exc:
        print(f"{fail} {exc}", file=sys.stderr)
        return 2
    name = args.model_name or args.reward
    app = create_reward_app(reward, model_name=name, api_key=api_key, window_ms=args.batch_window_ms,
                            max_batch=args.max_batch)  # fmt: skip
    print(
        f"align-chains serve-reward: {name!r} at http://{args.host}:{args.port}/score and /rerank",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
