"""Replicas on Ray Serve: 1 against 2 replicas under 8 clients, and a replica killed under load.

A local Ray cluster (``--cpus``, default 2) runs ``align-chains serve`` as a Serve application
(``align_chains_server.ray_serve``): Best-of-2 (``n=2``, ``max_tokens=16``, unseeded) on the
embedded SmolLM2-135M policy and its MiniLM reward unless ``--policy``/``--reward`` say otherwise,
one torch thread and one Ray CPU per replica.

- ``replicas``: for each round, the app at 1 replica, then at 2 (the order alternates by round;
  Serve scales the running app in place, the load waits until every replica answers). Each
  level: ``--clients`` clients sending the fixed prompts back to back, ``--requests`` in all.
  Reported: throughput, p50/p95 latency, status codes (5xx must be zero); medians over rounds
  and the 2-replica / 1-replica throughput ratio.
- ``kill``: at 2 replicas under the same load, one replica actor is killed (``ray.kill``) a few
  seconds in. Reported: requests that failed, seconds until Serve's replacement answers
  /health, and whether every other request was answered.

Run from the repository root (the server package and ``ray[serve]`` installed)::

    python benchmarks/bench_ray_serve.py --json docs/bench_ray_serve.json
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from bench_server_load import PROMPTS, free_port, percentile  # the same prompts as the one-process load test
from common import add_common_options, machine, machine_line, markdown_table, ratio, write_json

REPO = Path(__file__).resolve().parents[1]


def one_request(url: str, prompt: str) -> tuple[int, float, float]:
    """(status or -1 for a connection error, latency in seconds, time it ended)."""
    began = time.perf_counter()
    try:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": prompt}], "temperature": 0.7},
            timeout=600,
        )
        status = r.status_code
    except httpx.HTTPError:
        status = -1
    ended = time.perf_counter()
    return status, ended - began, ended


def load(url: str, clients: int, requests: int) -> dict[str, Any]:
    """``clients`` threads sending ``requests`` in all, back to back; throughput and latencies."""
    per_client = max(2, math.ceil(requests / clients))

    def client(c: int) -> list[tuple[int, float, float]]:
        return [one_request(url, PROMPTS[(c + i) % len(PROMPTS)]) for i in range(per_client)]

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = [o for chunk in pool.map(client, range(clients)) for o in chunk]
    seconds = time.perf_counter() - began
    latencies = sorted(latency for _, latency, _ in outcomes)
    statuses = Counter(str(status) for status, _, _ in outcomes)
    return {
        "requests": len(outcomes),
        "seconds": seconds,
        "throughput_rps": len(outcomes) / seconds,
        "p50_s": percentile(latencies, 0.5),
        "p95_s": percentile(latencies, 0.95),
        "statuses": dict(statuses),
        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5") or s == "-1"),
        "ends": [(status, ended - began) for status, _, ended in outcomes],
    }


def replicas_answering(url: str, want: int, within_s: float = 600) -> set[int]:
    """Ask /health through the proxy until ``want`` distinct replica processes answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + within_s
    while len(seen) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {want} replicas answered within {within_s} s")
        try:
            seen.add(httpx.get(f"{url}/health", timeout=10).json()["process"])
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(0.5)
    return seen


def deploy(options: list[str], replicas: int, url: str) -> None:
    """Run (or rescale in place) the app at ``replicas`` and wait until each one answers."""
    from align_chains_server import ray_serve
    from ray import serve

    app = ray_serve.app_builder(ray_serve.BuilderArgs(options=[*options, "--replicas", str(replicas)]))
    serve.run(app, name=ray_serve.APP_NAME, route_prefix="/")
    replicas_answering(url, replicas)
    load(url, clients=replicas * 2, requests=replicas * 4)  # warm-up: first passes, caches


def kill_one(url: str, clients: int, requests: int, kill_after_s: float) -> dict[str, Any]:
    """Load at 2 replicas; one replica actor killed ``kill_after_s`` in; failures and replacement."""
    import ray
    from align_chains_server import ray_serve

    def replica_names() -> list[str]:
        return sorted(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::") and f"#{ray_serve.DEPLOYMENT}#" in a["name"]
        )

    before = replica_names()
    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(load(url, clients, requests)))
    runner.start()
    time.sleep(kill_after_s)
    ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
    killed = time.perf_counter()
    while True:  # a new replica actor, and both replicas answering
        names = replica_names()
        if before[0] not in names and len(names) == 2:
            replicas_answering(url, 2)
            break
        time.sleep(0.2)
    replaced_s = time.perf_counter() - killed
    runner.join()
    failed = sum(n for s, n in outcome["statuses"].items() if s != "200")
    return {**outcome, "failed": failed, "replacement_answering_s": replaced_s}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--reward", default=None, help="reward spec (default: the strategy's, MiniLM)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48, help="requests per level (default 48)")
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds into the kill run")
    add_common_options(parser, repeats=3, seed=None, repeats_help="rounds (replica order alternates)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    import ray
    from ray import serve

    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "integrations" / "server"), os.environ.get("PYTHONPATH", "")]
    )
    options = ["--policy", args.policy, "-o", "n=2", "-o", "max_tokens=16", "--timeout", "600"]
    options += ["--max-concurrency", "64", "--threads-per-replica", "1"]
    if args.reward:
        options += ["--reward", args.reward]
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows: list[dict[str, Any]] = []
    try:
        for repeat in range(args.repeats):
            for replicas in (1, 2) if repeat % 2 == 0 else (2, 1):
                deploy(options, replicas, url)
                row = {"replicas": replicas, "round": repeat, **load(url, args.clients, args.requests)}
                row.pop("ends")
                rows.append(row)
                print(
                    f"{replicas} replica(s), round {repeat}: {row['throughput_rps']:.2f} req/s, "
                    f"p95 {row['p95_s']:.2f} s, statuses {row['statuses']}",
                    file=sys.stderr,
                )
        deploy(options, 2, url)
        kill = kill_one(url, args.clients, args.requests, args.kill_after)
    finally:
        serve.shutdown()
        ray.shutdown()
    report(args, rows, kill)


def report(args: argparse.Namespace, rows: list[dict[str, Any]], kill: dict[str, Any]) -> None:
    summary = {}
    for replicas in (1, 2):
        mine = [r for r in rows if r["replicas"] == replicas]
        summary[replicas] = {
            key: statistics.median(r[key] for r in mine) for key in ("throughput_rps", "p50_s", "p95_s")
        } | {"server_errors": sum(r["server_errors"] for r in mine)}
    speedup = ratio(summary[2]["throughput_rps"], summary[1]["throughput_rps"])
    info = machine(load_average=os.getloadavg(), ray_cpus=args.cpus)
    print(machine_line(info))
    print(f"# {args.clients} clients, {args.requests} requests per level, Best-of-2, max_tokens=16, "
          f"medians of {args.repeats} rounds; load average at the end {info['load_average']}")  # fmt: skip
    print(
        markdown_table(
            ["replicas", "req/s", "p50 s", "p95 s", "5xx"],
            [
                [
                    n,
                    f"{s['throughput_rps']:.2f}",
                    f"{s['p50_s']:.2f}",
                    f"{s['p95_s']:.2f}",
                    s["server_errors"],
                ]
                for n, s in summary.items()
            ],
        )
    )
    print(f"throughput, 2 replicas / 1: {speedup:.2f}x")
    print(
        f"kill one of 2 replicas {args.kill_after:g} s into {kill['requests']} requests: "
        f"{kill['failed']} failed ({kill['statuses']}), the replacement answered "
        f"{kill['replacement_answering_s']:.1f} s after the kill"
    )
    kill_row = {k: v for k, v in kill.items() if k != "ends"}
    write_json(
        args.json,
        {
            "machine": info,
            "settings": vars(args) | {"json": str(args.json)},
            "rounds": rows,
            "summary": {str(k): v for k, v in summary.items()},
            "throughput_ratio_2_vs_1": speedup,
            "kill": kill_row,
        },
    )


if __name__ == "__main__":
    main()
