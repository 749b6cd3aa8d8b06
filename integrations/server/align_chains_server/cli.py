"""``align-chains serve``: options, the API key, and uvicorn.

align-chains serve --strategy best-of-n --port 8000 -o n=8
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from align_chains.cli_options import parse_option
from align_chains.errors import AlignChainsError
from align_chains.models.embedded import EMBEDDED_POLICY
from align_chains.models.tool_formats import TOOL_FORMATS
from align_chains.scheduling import BatchingSettings
from align_chains_server.admission import AUTO_MEMORY_FRACTION, CostLimits, parse_memory_size
from align_chains_server.app import ServerLimits, create_app
from align_chains_server.service import DEFAULT_LIMITS, ServedModel

API_KEY_ENV = "ALIGN_CHAINS_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align-chains serve",
        description="Serve an aligned chat model over the OpenAI chat-completions API.",
    )
    parser.add_argument(
        "--strategy", default="best-of-n", help="A registered strategy name (default best-of-n)."
    )
    parser.add_argument("--policy", default=EMBEDDED_POLICY, help="Model id, directory or embedded name.")
    parser.add_argument(
        "--reward",
        help="Reward spec: 'minilm', 'judge', a model id or directory, or 'python:package.module:function' "
        "for a Python function (prompt, response) -> float (default: the strategy's own).",
    )
    parser.add_argument("--model-name", help="The model id clients send (default: the strategy name).")
    parser.add_argument("--host", default="127.0.0.1", help="Bind address (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", help="cpu, cuda, ... (automatic by default).")
    parser.add_argument("--dtype", help="bf16, fp16, fp32 (automatic by default: bf16 on a GPU that has it).")
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        type=parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="A default strategy or sampling setting, e.g. -o n=8 -o max_tokens=256 (repeatable).",
    )
    parser.add_argument(
        "--limit",
        action="append",
        type=parse_option,
        default=[],
        metavar="KEY=MAX",
        help="Largest value a request may ask for, over the bounds the strategies declare "
        f"(defaults: {dict(DEFAULT_LIMITS)}); repeatable.",
    )
    costs = CostLimits()
    parser.add_argument(
        "--max-decode-tokens",
        type=int,
        default=costs.decode_tokens,
        help=f"Most tokens one request may decode, all candidates, mutations and iterations counted "
        f"(default {costs.decode_tokens}); costlier requests get 400 before they run.",
    )
    parser.add_argument(
        "--max-forward-passes",
        type=int,
        default=costs.forward_passes,
        help=f"Most policy forward passes one request may take (default {costs.forward_passes}).",
    )
    parser.add_argument(
        "--max-reward-items",
        type=int,
        default=costs.reward_items,
        help=f"Most responses one request may have scored (default {costs.reward_items}).",
    )
    parser.add_argument(
        "--max-request-memory",
        type=memory_size,
        default=None,
        metavar="SIZE",
        help="Most memory one request's estimated peak may need, the weights included (align_chains."
        "memory.estimate_memory, as `align-chains estimate` prints it), e.g. 24GiB or 512MiB; larger "
        f"requests get 400 before they run (default auto: {AUTO_MEMORY_FRACTION:.0%} of the policy "
        "device's memory: a GPU's total, or on CPU the machine's RAM or its container's limit).",
    )
    limits = ServerLimits()
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=limits.max_concurrency,
        help=f"Requests in flight (queued or running) before 429 (default {limits.max_concurrency}).",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=limits.timeout_s,
        help="Seconds before a request is cancelled and gets 504 (default 300).",
    )
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000, help="Larger bodies get 413.")
    batching = BatchingSettings()
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=batching.window_s * 1000,
        help="How long a request waits for compatible ones to share its batched run "
        f"(default {batching.window_s * 1000:g} ms).",
    )
    parser.add_argument(
        "--batch-delay-factor",
        type=float,
        default=batching.delay_factor,
        help="After a batched run of g requests, wait up to this fraction of its duration for g "
        f"compatible requests (its clients coming back; default {batching.delay_factor:g}, 0 = off).",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=batching.max_batch,
        help=f"Most requests in one batched run (default {batching.max_batch}; 1 turns batching off).",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=limits.shutdown_timeout_s,
        help="On SIGTERM/SIGINT in-flight work is cancelled at its next step; the process exits after "
        f"at most this many seconds (default {limits.shutdown_timeout_s:g}).",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="Allow binding a non-loopback --host without an API key (anyone who can reach the port "
        "can then spend this machine's compute).",
    )
    parser.add_argument(
        "--log-content",
        action="store_true",
        help="Let the log quote prompts, completions and error messages that may contain them "
        "(off by default; keys are never logged).",
    )
    parser.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        help=f"Environment variable holding the bearer token clients must send (default {API_KEY_ENV}; "
        "unset or empty: no auth).",
    )
    parser.add_argument(
        "--api-key-file", type=Path, help="A file holding the bearer token (overrides the env)."
    )
    parser.add_argument(
        "--content-special-tokens",
        action="store_true",
        help="Read special-token strings in message content as control tokens (off by default: content "
        "is always text, so a client cannot forge a turn). Only for trusted clients that need raw tokens.",
    )
    parser.add_argument(
        "--tool-format",
        choices=TOOL_FORMATS,
        help="The tool-call format the policy writes (default: detected from its chat template; see "
        "docs/tool_calling.md).",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def memory_size(text: str) -> int | None:
    """argparse type for ``--max-request-memory``: ``auto`` (None) or a size in bytes."""
    try:
        return parse_memory_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_api_key(env_name: str, file: Path | None) -> str | None:
    """The bearer token from a file (first line) or an environment variable; None means no auth."""
    if file is not None:
        key = file.read_text(encoding="utf-8").strip()
        if not key:
            raise AlignChainsError(f"API key file {file} is empty.")
        return key
    return os.environ.get(env_name, "").strip() or None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _bad_numbers(args)
    if problem:
        return _fail(problem)
    try:
        served = served_model(args)
        api_key = read_api_key(args.api_key_env, args.api_key_file)
    except (AlignChainsError, OSError, TypeError, ValueError) as exc:
        message = str(exc)
        if isinstance(exc, ValidationError):
            message = "; ".join(
                f"invalid {'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
            )
        return _fail(message)
    if not api_key and not is_loopback(args.host) and not args.allow_unauthenticated:
        return _fail(
            f"--host {args.host} is reachable from other machines and no API key is set, so anyone "
            f"could spend this machine's compute. Set one (--api-key-file, or the {args.api_key_env} "
            "environment variable), bind 127.0.0.1, or pass --allow-unauthenticated if the network "
            "is trusted."
        )
    print(f"align-chains serve: loading {args.policy} and the reward…", file=sys.stderr)
    try:
        served.load()  # before binding the port: a bad policy or reward is a clear error, not a traceback
    except (AlignChainsError, OSError, ValueError) as exc:
        return _fail(str(exc))
    run_server(args, served, api_key)
    return 0


def _fail(message: str) -> int:
    print(f"align-chains serve: error: {message}", file=sys.stderr)
    return 2


def _bad_numbers(args: argparse.Namespace) -> str | None:
    """What is wrong with the numeric options, if anything."""
    for name, value in (
        ("max-concurrency", args.max_concurrency),
        ("timeout", args.timeout),
        ("max-body-bytes", args.max_body_bytes),
        ("max-decode-tokens", args.max_decode_tokens),
        ("max-forward-passes", args.max_forward_passes),
        ("max-reward-items", args.max_reward_items),
        ("max-batch", args.max_batch),
        ("shutdown-timeout", args.shutdown_timeout),
    ):
        if value <= 0:
            return f"--{name} must be positive, got {value}"
    if args.batch_delay_factor < 0:
        return "--batch-delay-factor must be >= 0"
    if args.batch_window_ms < 0:
        return "--batch-window-ms must be >= 0"
    return None


def served_model(args: argparse.Namespace) -> ServedModel:
    """The ServedModel the options describe (validated; nothing loaded yet)."""
    return ServedModel(
        strategy=args.strategy,
        policy_spec=args.policy,
        reward_spec=args.reward,
        defaults=dict(args.option),
        limits={k: float(v) for k, v in args.limit},
        device=args.device,
        model_id=args.model_name,
        dtype=args.dtype,
        cost_limits=CostLimits(
            decode_tokens=args.max_decode_tokens,
            forward_passes=args.max_forward_passes,
            reward_items=args.max_reward_items,
        ),
        memory_budget=args.max_request_memory,
        content_special_tokens=args.content_special_tokens,
        tool_format=args.tool_format,
    )


def run_server(args: argparse.Namespace, served: ServedModel, api_key: str | None) -> None:
    """Serve the loaded model with uvicorn until a signal stops it."""
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = ServerLimits(
        max_concurrency=args.max_concurrency,
        timeout_s=args.timeout,
        max_body_bytes=args.max_body_bytes,
        shutdown_timeout_s=args.shutdown_timeout,
    )
    batching = BatchingSettings(
        window_s=args.batch_window_ms / 1000, max_batch=args.max_batch, delay_factor=args.batch_delay_factor
    )
    app = create_app(served, limits=limits, api_key=api_key, batching=batching, log_content=args.log_content)
    budget = served.memory_plan()[0]
    print(
        f"align-chains serve: {served.model_id!r} ({args.strategy} on {args.policy}) at "
        f"http://{args.host}:{args.port}/v1 (auth {'on' if api_key else 'off'}; memory budget "
        f"{budget.bytes / 1024**3:.1f} GiB per request, {budget.source})",
        file=sys.stderr,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=max(1, round(args.shutdown_timeout)),
    )
    make_cancelling_server(uvicorn.Server)(config, app.state.scheduler.close, args.shutdown_timeout).run()


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable


def make_cancelling_server(base: type) -> type:
    """A uvicorn Server whose exit signal first cancels all in-flight work (so graceful shutdown
    does not wait for it) and arms a watchdog that ends the process if shutdown still stalls."""

    class _CancellingServer(base):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any, cancel_all: Callable[[], None], shutdown_timeout_s: float) -> None:
            super().__init__(config)
            self._cancel_all = cancel_all
            self._shutdown_timeout_s = shutdown_timeout_s

        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                logging.getLogger("align_chains_server").info("shutting down: cancelling in-flight work")
                self._cancel_all()
                watchdog = threading.Timer(self._shutdown_timeout_s + 5, os._exit, args=(1,))
                watchdog.daemon = True
                watchdog.start()
            super().handle_exit(sig, frame)

    return _CancellingServer


if __name__ == "__main__":
    sys.exit(main())
