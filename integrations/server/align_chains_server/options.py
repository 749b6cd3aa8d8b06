"""The options of ``align-chains serve`` and what they build: the argparse parser, the API
key, the served model, the server's limits and batching. Shared by the uvicorn command (cli.py)
and the Ray Serve replicas (ray_serve.py), which parse the same options.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from align_chains.cli_options import parse_option
from align_chains.errors import AlignChainsError
from align_chains.models.embedded import EMBEDDED_POLICY
from align_chains.models.tool_formats import TOOL_FORMATS
from align_chains.scheduling import BatchingSettings
from align_chains_server.admission import AUTO_MEMORY_FRACTION, CostLimits, parse_memory_size
from align_chains_server.app import ServerLimits
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
        "--max-running",
        type=int,
        default=batching.max_running,
        help="Batched runs in flight at once, taking turns on the policy between forward passes, so a "
        "short request is not stuck behind a long one; a run starts beside another only if their "
        f"estimated memory fits --max-request-memory together (default {batching.max_running}; 1: one "
        "run after the other).",
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
    add_ray_options(parser)
    return parser


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """``--ray`` and what it takes: replicas of the same app on Ray Serve (ray_serve.py)."""
    ray = parser.add_argument_group("Ray Serve (pip install 'align-chains-server[ray]')")
    ray.add_argument(
        "--ray",
        action="store_true",
        help="Serve through Ray Serve: --replicas copies of this server, each with its own policy and "
        "reward, behind Serve's proxy at --host:--port.",
    )
    ray.add_argument("--replicas", type=int, default=1, help="Replicas (the minimum when autoscaling).")
    ray.add_argument(
        "--max-replicas",
        type=int,
        help="Autoscale between --replicas and this many replicas on the requests in flight.",
    )
    ray.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=4,
        help="Autoscaling's target of requests in flight per replica (default 4: enough to batch).",
    )
    ray.add_argument(
        "--threads-per-replica",
        type=int,
        default=1,
        help="CPUs Ray reserves and torch threads each replica uses (default 1; on CUDA each replica "
        "also takes one GPU).",
    )
    ray.add_argument(
        "--health-check-period",
        type=float,
        default=10.0,
        help="Seconds between Serve's health checks of a replica (default 10).",
    )
    ray.add_argument(
        "--ray-address",
        help="A running cluster to join (e.g. ray://head:10001 or auto); default: start a local one.",
    )


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


def bad_numbers(args: argparse.Namespace) -> str | None:
    """What is wrong with the numeric options, if anything."""
    for name, value in (
        ("max-concurrency", args.max_concurrency),
        ("timeout", args.timeout),
        ("max-body-bytes", args.max_body_bytes),
        ("max-decode-tokens", args.max_decode_tokens),
        ("max-forward-passes", args.max_forward_passes),
        ("max-reward-items", args.max_reward_items),
        ("max-batch", args.max_batch),
        ("max-running", args.max_running),
        ("shutdown-timeout", args.shutdown_timeout),
        ("replicas", args.replicas),
        ("threads-per-replica", args.threads_per_replica),
        ("target-ongoing-requests", args.target_ongoing_requests),
        ("health-check-period", args.health_check_period),
    ):
        if value <= 0:
            return f"--{name} must be positive, got {value}"
    if args.batch_delay_factor < 0:
        return "--batch-delay-factor must be >= 0"
    if args.batch_window_ms < 0:
        return "--batch-window-ms must be >= 0"
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        return f"--max-replicas ({args.max_replicas}) must be at least --replicas ({args.replicas})"
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


def server_limits(args: argparse.Namespace) -> ServerLimits:
    """The app's operational limits from the options."""
    return ServerLimits(
        max_concurrency=args.max_concurrency,
        timeout_s=args.timeout,
        max_body_bytes=args.max_body_bytes,
        shutdown_timeout_s=args.shutdown_timeout,
    )


def batching_settings(args: argparse.Namespace) -> BatchingSettings:
    """The scheduler's batching settings from the options."""
    return BatchingSettings(
        window_s=args.batch_window_ms / 1000,
        max_batch=args.max_batch,
        delay_factor=args.batch_delay_factor,
        max_running=args.max_running,
    )
