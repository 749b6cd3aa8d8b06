"""The FastAPI application: OpenAI chat completions over one served aligned chat model.

Guards, in the order a request meets them: bearer auth, the body-size limit (413), the
concurrency limit (429), strict parsing and validation (400/404), the run in a worker thread
with a timeout (504). Every error has the OpenAI error shape; nothing a client sends produces a
traceback in the response.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from align_chains.errors import AlignChainsError, InvalidInputError, RewardError
from align_chains_server.schemas import ChatCompletionRequest, describe_validation_error, error_body
from align_chains_server.service import RequestError, ServedModel

log = logging.getLogger("align_chains_server")


@dataclass(frozen=True)
class ServerLimits:
    """Operational limits; see ``align-chains serve --help``."""

    max_concurrency: int = 4
    timeout_s: float = 300.0
    max_body_bytes: int = 1_000_000


def _error(
    status: int, message: str, *, kind: str | None = None, param: str | None = None, code: str | None = None
) -> JSONResponse:
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(error_body(message, kind=kind, param=param, code=code), status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) past ``limit`` bytes, whether or not Content-Length is sent."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"Request body of {declared} bytes is over the limit of {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"Request body is over the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    served: ServedModel, *, limits: ServerLimits | None = None, api_key: str | None = None
) -> FastAPI:
    """Build the app. ``served`` loads at startup; ``api_key`` (if set) is required as a bearer token."""
    limits = limits or ServerLimits()
    executor = ThreadPoolExecutor(max_workers=limits.max_concurrency, thread_name_prefix="align-chains")
    state: dict[str, Any] = {"in_flight": 0, "served": 0}

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("loading strategy %s on policy %s", served.strategy, served.policy_spec)
        await asyncio.get_running_loop().run_in_executor(executor, served.load)
        log.info("ready: serving %r", served.model_id)
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="align-chains", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"Internal error ({type(exc).__name__}); see the server log.")

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path.startswith("/v1/"):
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), api_key.encode()
            ):
                return _error(
                    401,
                    "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                    kind="authentication_error",
                    code="invalid_api_key",
                )
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok" if served.loaded else "loading",
            "model": served.model_id,
            "strategy": served.strategy,
            "in_flight": state["in_flight"],
            "max_concurrency": limits.max_concurrency,
            "served": state["served"],
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": served.model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "align-chains",
                    "align_chains": {
                        "strategy": served.strategy,
                        "policy": served.policy_spec,
                        "settings": served.strategy_fields(),
                        "limits": served.limits,
                    },
                }
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            return await _chat(request)
        except RequestError as exc:
            return _error(exc.status, exc.message, kind=exc.kind, param=exc.param)

    async def _chat(request: Request) -> Any:
        body = await _read_body(request, limits.max_body_bytes)
        if state["in_flight"] >= limits.max_concurrency:
            return _error(
                429,
                f"The server is busy ({limits.max_concurrency} requests in flight); retry shortly.",
                kind="rate_limit_error",
                code="too_many_requests",
            )
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"The body is not valid JSON: {exc}.") from exc
        if not isinstance(payload, dict):
            raise RequestError(400, f"The body must be a JSON object, not {type(payload).__name__}.")
        try:
            parsed = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise RequestError(400, message, param=param) from exc
        if not served.loaded:
            raise RequestError(503, "The model is still loading; retry shortly.")
        model, conversation, stop = served.prepare(parsed)
        output = served.output_request(parsed)

        state["in_flight"] += 1
        future = executor.submit(served.run, model, conversation, stop, parsed.stream, output)

        def _release(_: Any) -> None:  # the slot frees when the work ends, not when we stop waiting
            loop.call_soon_threadsafe(_done)

        def _done() -> None:
            state["in_flight"] -= 1

        loop = asyncio.get_running_loop()
        future.add_done_callback(_release)
        try:
            result, reply = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), limits.timeout_s
            )
        except TimeoutError as exc:
            raise RequestError(
                504,
                f"The request did not finish within {limits.timeout_s:g} s; ask for fewer tokens or samples.",
                kind="timeout_error",
            ) from exc
        except InvalidInputError as exc:
            raise RequestError(400, str(exc)) from exc
        except RewardError as exc:
            log.error("reward failed: %s", exc)
            raise RequestError(500, f"The reward model failed: {exc}", kind="server_error") from exc
        except AlignChainsError as exc:
            log.error("strategy failed: %s", exc)
            raise RequestError(500, f"The strategy failed: {exc}", kind="server_error") from exc
        state["served"] += 1

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        extension = {**served.extension(model, result), **reply.extension}
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.best.num_tokens,
            "total_tokens": result.prompt_tokens + result.best.num_tokens,
        }
        if not parsed.stream:
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": served.model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": reply.message(),
                        "logprobs": None,
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": usage,
                "align_chains": extension,
            }
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        return StreamingResponse(
            _sse(
                completion_id,
                created,
                served.model_id,
                reply.deltas,
                reply.finish_reason,
                usage,
                extension,
                include_usage,
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


async def _sse(
    completion_id: str,
    created: int,
    model_id: str,
    deltas: list[dict[str, Any]],
    finish_reason: str,
    usage: dict[str, int],
    extension: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI chunks: the role, the answer token by token (content, then any tool calls with
    their arguments in pieces), the finish reason, usage, then [DONE]."""

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            body["usage"] = None
        body.update(extra)
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for delta in deltas:
        yield chunk(delta)
    if include_usage:
        yield chunk({}, finish_reason)
        yield chunk(None, usage=usage, align_chains=extension)
    else:
        yield chunk({}, finish_reason, align_chains=extension)
    yield "data: [DONE]\n\n"
