"""The FastAPI application: OpenAI chat completions over one served aligned chat model.

Guards, in the order a request meets them: bearer auth, the body-size limit (413), the
concurrency limit (429), strict parsing and validation (400/404), admission control on the
request's estimated cost and prompt length (400), then the scheduler (``align_chains.scheduling``), which
batches compatible requests. Every request carries a cancellation token: it is cancelled at
the timeout (504), when the client disconnects, and on shutdown (503), and the strategy stops
at its next step, freeing the policy for the next request. Every error has the OpenAI error
shape; nothing a client sends produces a traceback in the response, and the log never holds
prompts, completions or keys unless ``log_content`` is set.

The routes are a FastAPI ``APIRouter``; what they share (the served model, the scheduler, the
limits and the live counts) is the app's ``ServerState`` on ``app.state.server``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from align_chains.cancellation import Cancelled, CancelToken
from align_chains.chat_models.results import TokenUsage
from align_chains.errors import AlignChainsError, InvalidInputError, RewardError
from align_chains.scheduling import SHUTDOWN_REASON, BatchingSettings, Job, Scheduler
from align_chains_server.schemas import (
    REQUEST_BODY_DOC,
    ChatCompletionRequest,
    describe_validation_error,
    error_body,
    openapi_schemas,
)
from align_chains_server.service import PreparedRequest, RequestError, ServedModel
from align_chains_server.tools import Reply

log = logging.getLogger("align_chains_server")

CLIENT_GONE = "client disconnected"
_POLL_S = 0.05  # how often a waiting request looks for its client's disconnect


@dataclass(frozen=True)
class ServerLimits:
    """Operational limits; see ``align-chains serve --help``."""

    max_concurrency: int = 16
    timeout_s: float = 300.0
    max_body_bytes: int = 1_000_000
    shutdown_timeout_s: float = 10.0


def _error(
    status: int, message: str, *, kind: str | None = None, param: str | None = None, code: str | None = None
) -> JSONResponse:
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(error_body(message, kind=kind, param=param, code=code), status_code=status)


class BearerAuth:
    """Pure ASGI middleware: /v1/ paths need ``Authorization: Bearer <key>`` (401 otherwise).

    (Not ``BaseHTTPMiddleware``, so a request handler still sees its client disconnect.)
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope.get("headers") or [])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
                response = _error(
                    401,
                    "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                    kind="authentication_error",
                    code="invalid_api_key",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


class _ClientGone(Exception):
    """The client disconnected while its request waited or ran; nobody reads the answer."""


@dataclass
class ServerState:
    """What the routes share, kept on ``app.state.server``: the served model, the scheduler, the
    limits, and the live counts /health reports (changed only on the event loop's thread)."""

    served: ServedModel
    scheduler: Scheduler
    limits: ServerLimits
    batching: BatchingSettings
    log_content: bool = False
    in_flight: int = 0
    answered: int = 0

    def log_failure(self, what: str, exc: Exception) -> None:
        if self.log_content:
            log.error("%s: %s", what, exc)
        else:  # exception messages may quote prompts or answers
            log.error("%s: %s (start with --log-content to see the message)", what, type(exc).__name__)


def server_state(request: Request) -> ServerState:
    """The app's ``ServerState`` (a FastAPI dependency)."""
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]
router = APIRouter()


def create_app(
    served: ServedModel,
    *,
    limits: ServerLimits | None = None,
    api_key: str | None = None,
    batching: BatchingSettings | None = None,
    log_content: bool = False,
) -> FastAPI:
    """Build the app. ``served`` loads at startup; ``api_key`` (if set) is required as a bearer
    token; ``batching`` gathers concurrent compatible requests into one run (``max_batch=1``:
    one request at a time); ``log_content`` lets error logs quote prompts and completions."""
    limits = limits or ServerLimits()
    batching = batching or BatchingSettings()
    scheduler = Scheduler(served.run_together, batching, fits=served.fit_together)
    state = ServerState(served, scheduler, limits, batching, log_content)
    app = FastAPI(title="align-chains", version="0.1.0", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    app.state.scheduler = state.scheduler
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the request body's schemas (the route reads its body by hand)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        spec.setdefault("components", {}).setdefault("schemas", {}).update(openapi_schemas())
        app.openapi_schema = spec
    return app.openapi_schema


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the served model before the first request; on shutdown stop the scheduler."""
    state: ServerState = app.state.server
    log.info("loading strategy %s on policy %s", state.served.strategy, state.served.policy_spec)
    await asyncio.to_thread(state.served.load)
    log.info("ready: serving %r", state.served.model_id)
    yield
    state.scheduler.close()
    await asyncio.to_thread(state.scheduler.join, state.limits.shutdown_timeout_s)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    if server_state(request).log_content:
        log.exception("unexpected error on %s", request.url.path)
    else:
        log.error("unexpected error on %s: %s", request.url.path, type(exc).__name__)
    return _error(500, f"Internal error ({type(exc).__name__}); see the server log.")


@router.get("/health")
async def health(state: State) -> dict[str, Any]:
    served, scheduler = state.served, state.scheduler
    return {
        "status": "ok" if served.loaded else "loading",
        "process": os.getpid(),  # tells replicas behind one proxy apart
        "model": served.model_id,
        "strategy": served.strategy,
        "in_flight": state.in_flight,
        "queued": scheduler.queued,
        "max_concurrency": state.limits.max_concurrency,
        "served": state.answered,
        "batches": asdict(scheduler.stats),
    }


@router.get("/v1/models")
async def models(state: State) -> dict[str, Any]:
    served, limits = state.served, state.limits
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
                    "limits": {
                        "settings": served.setting_limits(),
                        "cost": asdict(served.cost_limits),
                        "memory": asdict(served.memory_plan()[0]) if served.loaded else None,
                        "context_length": served.policy.context_length if served.loaded else None,
                        "timeout_s": limits.timeout_s,
                        "max_concurrency": limits.max_concurrency,
                        "max_body_bytes": limits.max_body_bytes,
                        "batching": asdict(state.batching),
                    },
                },
            }
        ],
    }


@router.post("/v1/chat/completions", openapi_extra=REQUEST_BODY_DOC)
async def chat_completions(request: Request, state: State) -> Any:
    try:
        return await _chat(request, state)
    except RequestError as exc:
        return _error(exc.status, exc.message, kind=exc.kind, param=exc.param, code=exc.code)
    except _ClientGone:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it


def _parse(body: bytes) -> ChatCompletionRequest:
    """The body as a ChatCompletionRequest (400 when it is not one)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"The body is not valid JSON: {exc}.") from exc
    if not isinstance(payload, dict):
        raise RequestError(400, f"The body must be a JSON object, not {type(payload).__name__}.")
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise RequestError(400, message, param=param) from exc


async def _chat(request: Request, state: ServerState) -> Any:
    limits = state.limits
    body = await _read_body(request, limits.max_body_bytes)
    if state.in_flight >= limits.max_concurrency:
        return _error(
            429,
            f"The server is busy ({limits.max_concurrency} requests in flight); retry shortly.",
            kind="rate_limit_error",
            code="too_many_requests",
        )
    parsed = _parse(body)
    if not state.served.loaded:
        raise RequestError(503, "The model is still loading; retry shortly.")
    planned = state.served.plan(parsed)
    began = time.monotonic()
    result, reply = await _run(request, state, planned)
    state.answered += 1
    log.info(
        "answered: %d prompt tokens, %d completion tokens, batch of %d, %.2f s",
        result.prompt_tokens,
        result.best.num_tokens,
        result.counters.batch_size,
        time.monotonic() - began,
    )
    return _respond(planned, parsed, state.served, result, reply)


async def _run(request: Request, state: ServerState, planned: PreparedRequest) -> tuple[Any, Reply]:
    """Queue the planned request and wait for its result, turning failures into RequestErrors."""
    token = state.scheduler.token(state.limits.timeout_s)
    state.in_flight += 1
    loop = asyncio.get_running_loop()
    job = state.scheduler.submit(planned, token)

    def done() -> None:
        state.in_flight -= 1

    # the slot frees when the work ends (within a step of a cancel), not when we stop waiting
    job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(done))
    try:
        return await _wait(request, job, token)
    except Cancelled as exc:
        budget = getattr(planned.model, "time_budget_s", None)
        if exc.reason == "deadline" and budget is not None and not token.cancelled:
            # the request's own time_budget_s ran out, not the server's timeout: the client's setting
            raise RequestError(
                400,
                f"time_budget_s={budget:g} ran out before any answer was ready; raise it or leave it unset.",
                param="time_budget_s",
                code="time_budget_exceeded",
            ) from exc
        raise _cancelled_error(exc.reason, state.limits.timeout_s) from exc
    except InvalidInputError as exc:
        raise RequestError(400, str(exc)) from exc
    except RewardError as exc:
        state.log_failure("reward failed", exc)
        raise RequestError(500, f"The reward model failed: {exc}", kind="server_error") from exc
    except AlignChainsError as exc:
        state.log_failure("strategy failed", exc)
        raise RequestError(500, f"The strategy failed: {exc}", kind="server_error") from exc


async def _wait(request: Request, job: Job, token: CancelToken) -> Any:
    """The job's outcome; cancels it at the timeout (504) or when the client disconnects, seen
    here or as the handler's task being cancelled (Ray Serve's proxy cancels a replica's call
    when its client goes)."""
    waiter = asyncio.wrap_future(job.future)
    waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if we left
    while True:
        try:
            done, _ = await asyncio.wait({waiter}, timeout=_POLL_S)
        except asyncio.CancelledError:
            token.cancel(CLIENT_GONE)
            raise
        if done:
            return waiter.result()
        if token.cancelled:  # the deadline passed (or shutdown): answer now, the work stops itself
            token.cancel(token.reason or "cancelled")
            raise Cancelled(token.reason or "cancelled")
        if await request.is_disconnected():
            token.cancel(CLIENT_GONE)
            raise _ClientGone


def _cancelled_error(reason: str, timeout_s: float) -> RequestError | _ClientGone:
    if reason == CLIENT_GONE:
        return _ClientGone()
    if reason == SHUTDOWN_REASON:
        return RequestError(
            503, "The server is shutting down; retry on another instance.", kind="server_error"
        )
    return RequestError(
        504,
        f"The request did not finish within {timeout_s:g} s; ask for fewer tokens or samples.",
        kind="timeout_error",
    )


def _respond(
    planned: PreparedRequest,
    parsed: ChatCompletionRequest,
    served: ServedModel,
    result: Any,
    reply: Reply,
) -> Any:
    """The OpenAI completion (or its stream) for a finished request."""
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    extension = {**served.extension(planned.model, result), **reply.extension}
    usage = TokenUsage.of(result).openai()  # every token spent; the chosen answer's is a detail
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
