"""``align-chains serve``: options, the API key, and uvicorn.

align-chains serve --strategy best-of-n --port 8000 -o n=8
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from align_chains.cli_options import parse_option
from align_chains.errors import AlignChainsError
from align_chains.models.embedded import EMBEDDED_POLICY
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
        help="Reward spec: 'minilm', 'judge', a model id or directory, or 'package.module:function' for a "
        "Python function (prompt, response) -> float (default: the strategy's own).",
    )
    parser.add_argument("--model-name", help="The model id clients send (default: the strategy name).")
    parser.add_argument("--host", default="127.0.0.1", help="Bind address (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", help="cpu, cuda, ... (automatic by default).")
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
        help=f"Largest value a request may ask for (defaults: {DEFAULT_LIMITS}); repeatable.",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=4, help="Requests in flight before 429 (default 4)."
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds before a request gets 504.")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000, help="Larger bodies get 413.")
    parser.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        help=f"Environment variable holding the bearer token clients must send (default {API_KEY_ENV}; "
        "unset or empty: no auth).",
    )
    parser.add_argument(
        "--api-key-file", type=Path, help="A file holding the bearer token (overrides the env)."
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


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
    for name, value in (
        ("max-concurrency", args.max_concurrency),
        ("timeout", args.timeout),
        ("max-body-bytes", args.max_body_bytes),
    ):
        if value <= 0:
            print(f"align-chains serve: error: --{name} must be positive, got {value}", file=sys.stderr)
            return 2
    try:
        served = ServedModel(
            strategy=args.strategy,
            policy_spec=args.policy,
            reward_spec=args.reward,
            defaults=dict(args.option),
            limits={**DEFAULT_LIMITS, **{k: float(v) for k, v in args.limit}},
            device=args.device,
            model_id=args.model_name,
        )
        api_key = read_api_key(args.api_key_env, args.api_key_file)
    except (AlignChainsError, OSError, TypeError, ValueError) as exc:
        message = str(exc)
        if isinstance(exc, ValidationError):
            message = "; ".join(
                f"invalid {'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
            )
        print(f"align-chains serve: error: {message}", file=sys.stderr)
        return 2
    print(f"align-chains serve: loading {args.policy} and the reward…", file=sys.stderr)
    try:
        served.load()  # before binding the port: a bad policy or reward is a clear error, not a traceback
    except (AlignChainsError, OSError, ValueError) as exc:
        print(f"align-chains serve: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = ServerLimits(
        max_concurrency=args.max_concurrency, timeout_s=args.timeout, max_body_bytes=args.max_body_bytes
    )
    app = create_app(served, limits=limits, api_key=api_key)
    print(
        f"align-chains serve: {served.model_id!r} ({args.strategy} on {args.policy}) at "
        f"http://{args.host}:{args.port}/v1 (auth {'on' if api_key else 'off'})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
