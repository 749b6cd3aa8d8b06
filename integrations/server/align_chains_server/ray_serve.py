"""The OpenAI-compatible server as a Ray Serve application: N replicas of the same FastAPI app.

Each replica is one Ray actor running ``create_app`` (admission, cancellation, batching) over its
own policy and reward, loaded by the app's lifespan when the replica starts. Serve's proxy
spreads requests over the replicas; a replica that dies or fails ``check_health`` is replaced;
on scale-down Serve stops routing to a replica and waits for its in-flight requests (graceful
drain, ``graceful_shutdown_timeout_s``) before its lifespan cancels what is left.

Two ways in (both take the options of ``align-chains serve``):

- ``align-chains serve --ray --replicas 2 -o n=4`` starts (or joins, ``--ray-address``) a cluster;
- ``serve run integrations/server/serve_config.yaml``: the import path
  ``align_chains_server.ray_serve:app_builder`` with ``args: {options: [...]}``, the deployment's
  replicas, autoscaling and resources overridden in the file like any Serve deployment.

This module imports Ray at the top: only ``--ray`` and ``serve run`` import it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from align_chains_server.app import create_app
from align_chains_server.options import (
    bad_numbers,
    batching_settings,
    build_parser,
    read_api_key,
    served_model,
    server_limits,
)

DEPLOYMENT = "align-chains"
APP_NAME = "align-chains"


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()
class AlignChainsReplica:
    """One replica: the server's app over its own policy and reward, ``threads`` torch threads."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        torch.set_num_threads(args.threads_per_replica)
        self.served = served_model(args)
        # the key is read on the replica's node (its env or file), never shipped through Ray
        api_key = read_api_key(args.api_key_env, args.api_key_file)
        self.server_app = create_app(
            self.served,
            limits=server_limits(args),
            api_key=api_key,
            batching=batching_settings(args),
            log_content=args.log_content,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.server_app

    def check_health(self) -> None:
        """Serve's periodic probe: fails once the model is gone or the scheduler's worker ended,
        so Serve replaces this replica instead of routing requests to it."""
        if not self.served.loaded:
            raise RuntimeError("the policy is not loaded")
        if self.server_app.state.scheduler.join(0):
            raise RuntimeError("the scheduler's worker thread has stopped")


def deployment_options(args: argparse.Namespace) -> dict[str, Any]:
    """Serve's deployment options for these CLI options: replicas (fixed, or autoscaled up to
    ``--max-replicas``), one GPU or ``--threads-per-replica`` CPUs each, health checks, drain."""
    options: dict[str, Any] = {
        "ray_actor_options": replica_resources(args),
        # Serve queues past this, so the replica's own 429 limit is never the first to answer
        "max_ongoing_requests": args.max_concurrency,
        # drain: every in-flight request ends by its own timeout, then its cancellation settles
        "graceful_shutdown_timeout_s": args.timeout + args.shutdown_timeout,
        "health_check_period_s": args.health_check_period,
    }
    if args.max_replicas and args.max_replicas > args.replicas:
        options["autoscaling_config"] = {
            "min_replicas": args.replicas,
            "initial_replicas": args.replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = args.replicas
    return options


def replica_resources(args: argparse.Namespace) -> dict[str, Any]:
    """One GPU per replica when the policy runs on CUDA, else ``--threads-per-replica`` CPUs
    (and as many torch/OpenMP threads, so replicas on one node do not oversubscribe it)."""
    threads = args.threads_per_replica
    resources: dict[str, Any] = {
        "num_cpus": threads,
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}},
    }
    if wants_gpu(args.device):
        resources["num_gpus"] = 1
    return resources


def wants_gpu(device: str | None) -> bool:
    """Whether replicas need a GPU: ``--device cuda...``, or no device and CUDA visible here."""
    if device is not None:
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def application(args: argparse.Namespace) -> Application:
    """The Serve application (not yet running) for parsed ``align-chains serve`` options."""
    return AlignChainsReplica.options(**deployment_options(args)).bind(args)


class BuilderArgs(BaseModel):
    """``args:`` of a ``serve run`` config: the ``align-chains serve`` options, as a list."""

    options: list[str] = Field(default_factory=list)


def app_builder(args: BuilderArgs) -> Application:
    """``serve run``'s application builder (``import_path: align_chains_server.ray_serve:app_builder``)."""
    parser = build_parser()
    try:
        parsed = parser.parse_args([*args.options, "--ray"])
    except SystemExit:  # argparse printed the problem
        raise ValueError(
            f"invalid align-chains serve options {args.options!r}; see the message above"
        ) from None
    problem = bad_numbers(parsed)
    if problem:
        raise ValueError(problem)
    served_model(parsed)  # validate the strategy, settings and limits before any replica starts
    return application(parsed)


def serve_on_ray(args: argparse.Namespace) -> int:
    """Start (or join) a Ray cluster, run the app on Serve's proxy at ``--host:--port``, and
    wait for SIGINT/SIGTERM; then shut Serve down (replicas drain) and leave the cluster."""
    import ray

    ray.init(address=args.ray_address)  # replicas' logs reach this terminal
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(application(args), name=APP_NAME, route_prefix="/")
        print(
            f"align-chains serve: {args.replicas} replica(s) of {args.strategy} on {args.policy} at "
            f"http://{args.host}:{args.port}/v1 (Ray Serve)",
            file=sys.stderr,
        )
        stop.wait()
    finally:
        print("align-chains serve: draining the replicas…", file=sys.stderr)
        serve.shutdown()
        ray.shutdown()
    return 0
