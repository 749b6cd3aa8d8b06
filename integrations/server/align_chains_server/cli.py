"""``align-chains serve``: checks the options (options.py), then uvicorn or Ray Serve (ray_serve.py).

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
from typing import Any

from pydantic import ValidationError

from align_chains.errors import AlignChainsError
from align_chains_server.app import create_app
from align_chains_server.options import (
    API_KEY_ENV,
    bad_numbers,
    batching_settings,
    build_parser,
    read_api_key,
    served_model,
    server_limits,
)
from align_chains_server.service import ServedModel

__all__ = ["API_KEY_ENV", "build_parser", "is_loopback", "main", "read_api_key", "served_model"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = bad_numbers(args)
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
    if args.ray:  # each replica loads its own policy and reward
        from align_chains_server.ray_serve import serve_on_ray

        return serve_on_ray(args)
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


def run_server(args: argparse.Namespace, served: ServedModel, api_key: str | None) -> None:
    """Serve the loaded model with uvicorn until a signal stops it."""
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(
        served,
        limits=server_limits(args),
        api_key=api_key,
        batching=batching_settings(args),
        log_content=args.log_content,
    )
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
