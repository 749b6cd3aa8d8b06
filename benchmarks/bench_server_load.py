"""Loopback load test of ``align-chains serve``: request batching against serialised requests.

Two server processes on 127.0.0.1 serve the same Best-of-N model (the embedded SmolLM2-135M
policy and MiniLM reward unless ``--policy``/``--reward`` say otherwise):

- ``serialised``: ``--max-batch 1``, one request per strategy run (the server before batching);
- ``batched``: ``--max-batch 8`` and the default 50 ms window, concurrent requests with equal settings
  gathered into one batched run.

For each level of 1, 4, 8 and 16 concurrent clients, both servers get the same requests
(short Best-of-N: ``n=2``, ``max_tokens=16``, unseeded; prompts fixed below, written before any
run), the two servers taking turns level by level so machine noise hits both alike. Each
client sends its requests back to back. Reported per server and level: requests, throughput
(requests/s), p50/p95/max latency, and the status codes (5xx must be zero). Bounded: at most
``--requests`` per level (at least two per client) and ``--max-seconds`` in all.

Run from the repository root (the server package installed, or on PYTHONPATH)::

    python benchmarks/bench_server_load.py --json server_load.json
    python benchmarks/bench_server_load.py --policy <dir> --reward python:package.module:fn   # any models
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from common import add_common_options, machine, machine_line, markdown_table, ratio, write_json

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Give me one tip for better sleep.",
    "What is a good name for a grey cat?",
    "Explain what a prime number is in one sentence.",
    "Suggest a healthy breakfast.",
    "How do I boil an egg?",
    "Name a fun weekend activity.",
    "Why is the sky blue? Answer briefly.",
    "Write a short greeting for a new colleague.",
]
LEVELS = (1, 4, 8, 16)
SERVERS = {
    "serialised": ["--max-batch", "1"],
    "batched": ["--max-batch", "8"],  # the default 50 ms batch window
}


@dataclass
class LevelResult:
    server: str
    clients: int
    requests: int
    seconds: float
    throughput_rps: float
    p50_s: float
    p95_s: float
    max_s: float
    statuses: dict[str, int]
    mean_batch: float
    latencies: list[float] = field(repr=False)
    repeat: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env() -> dict[str, str]:
    """The environment of an ``align-chains serve`` child: this checkout's code, one thread unless set."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(REPO / "integrations" / "server"), env.get("PYTHONPATH", "")) if p
    )
    return env


def launch(name: str, extra: list[str], args: argparse.Namespace, logs: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = serve_env()
    command = [
        sys.executable, "-m", "align_chains.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--strategy", "best-of-n", "--policy", args.policy, "--max-concurrency", "64", "--timeout", "600",
        "-o", "n=2", "-o", "max_tokens=16", *extra,
    ]  # fmt: skip
    if args.reward:
        command += ["--reward", args.reward]
    handle = (logs / f"{name}.log").open("w")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, log: Path, wait_s: float = 600) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {wait_s} s:\n{log.read_text()}")


def one_request(url: str, prompt: str) -> tuple[int, float, int]:
    """(status, latency in seconds, batch size the server reports)."""
    began = time.perf_counter()
    try:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": prompt}], "temperature": 0.7},
            timeout=600,
        )
    except httpx.HTTPError:
        return -1, time.perf_counter() - began, 0
    latency = time.perf_counter() - began
    batch = r.json()["align_chains"]["compute"]["batch_size"] if r.status_code == 200 else 0
    return r.status_code, latency, batch


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in (0, 1]) of an ascending list."""
    if q == 0.5:
        return statistics.median(sorted_values)
    return sorted_values[min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)]


def run_level(name: str, url: str, clients: int, per_client: int) -> LevelResult:
    def client(c: int) -> list[tuple[int, float, int]]:
        return [one_request(url, PROMPTS[(c + i) % len(PROMPTS)]) for i in range(per_client)]

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = [o for chunk in pool.map(client, range(clients)) for o in chunk]
    seconds = time.perf_counter() - began
    latencies = sorted(latency for _, latency, _ in outcomes)
    statuses = Counter(str(status) for status, _, _ in outcomes)
    batches = [b for status, _, b in outcomes if status == 200]
    return LevelResult(
        server=name,
        clients=clients,
        requests=len(outcomes),
        seconds=seconds,
        throughput_rps=len(outcomes) / seconds,
        p50_s=percentile(latencies, 0.5),
        p95_s=percentile(latencies, 0.95),
        max_s=latencies[-1],
        statuses=dict(statuses),
        mean_batch=statistics.fmean(batches) if batches else 0.0,
        latencies=latencies,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--reward", default=None, help="reward spec (default: the strategy's, MiniLM)")
    parser.add_argument("--requests", type=int, default=16, help="requests per level (at least 2 per client)")
    parser.add_argument("--max-seconds", type=float, default=1200, help="stop starting new levels after this")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="client counts, comma-separated")
    add_common_options(  # requests are unseeded on purpose: no --seed
        parser,
        repeats=1,
        seed=None,
        repeats_help="rounds per level (server order alternates); medians reported",
    )
    return parser


def run_levels(
    servers: dict[str, tuple[subprocess.Popen, str]], levels: list[int], args: argparse.Namespace
) -> list[LevelResult]:
    """Every level and round on both servers, taking turns (the order alternates by round)."""
    results: list[LevelResult] = []
    began = time.monotonic()
    for clients, repeat in [(clients, r) for clients in levels for r in range(args.repeats)]:
        if time.monotonic() - began > args.max_seconds:
            print(f"stopping before {clients} clients: --max-seconds reached", file=sys.stderr)
            break
        per_client = max(2, math.ceil(args.requests / clients))
        order = list(servers.items()) if repeat % 2 == 0 else list(servers.items())[::-1]
        for name, (_, url) in order:
            result = run_level(name, url, clients, per_client)
            result.repeat = repeat
            results.append(result)
            print(
                f"{name:>10} {clients:>2} clients (round {repeat}): {result.requests} requests in "
                f"{result.seconds:.1f} s, {result.throughput_rps:.2f} req/s, p50 {result.p50_s:.2f} s, "
                f"p95 {result.p95_s:.2f} s, mean batch {result.mean_batch:.1f}, "
                f"statuses {result.statuses}",
                flush=True,
            )
    return results


def table_rows(results: list[LevelResult], levels: list[int]) -> list[list[str]]:
    rows = []
    for clients in levels:
        ser = [r for r in results if r.server == "serialised" and r.clients == clients]
        bat = [r for r in results if r.server == "batched" and r.clients == clients]
        pairs = [(s_, b_) for s_ in ser for b_ in bat if s_.repeat == b_.repeat]
        if not pairs:
            continue
        throughput = statistics.median(ratio(b_.throughput_rps, s_.throughput_rps) for s_, b_ in pairs)
        fivexx = sum(n for r in ser + bat for s, n in r.statuses.items() if s.startswith("5") or s == "-1")
        lat_s = sorted(x for r in ser for x in r.latencies)
        lat_b = sorted(x for r in bat for x in r.latencies)
        rows.append([
            str(clients), str(len(pairs)), f"{statistics.median(r.throughput_rps for r in ser):.2f}",
            f"{statistics.median(r.throughput_rps for r in bat):.2f}", f"{throughput:.2f}x",
            f"{percentile(lat_s, 0.5):.2f} / {percentile(lat_b, 0.5):.2f}",
            f"{percentile(lat_s, 0.95):.2f} / {percentile(lat_b, 0.95):.2f}",
            f"{statistics.fmean(r.mean_batch for r in bat):.1f}", str(fivexx),
        ])  # fmt: skip
    return rows


def main() -> None:
    args = build_parser().parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    # a killed benchmark still stops its two servers (the ``finally`` below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logs = Path(tempfile.mkdtemp(prefix="server-load-"))
    servers = {name: launch(name, extra, args, logs) for name, extra in SERVERS.items()}
    try:
        for name, (process, url) in servers.items():
            wait_ready(process, url, logs / f"{name}.log")
            for prompt in PROMPTS[:2]:  # warm-up, untimed
                one_request(url, prompt)
        results = run_levels(servers, levels, args)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)

    env = machine()
    header = ["clients", "rounds", "serialised req/s", "batched req/s", "throughput ratio (median)",
              "p50 ser / bat (s)", "p95 ser / bat (s)", "mean batch", "5xx"]  # fmt: skip
    print(f"\n{machine_line(env)}\n{markdown_table(header, table_rows(results, levels))}")
    payload = {"machine": env, "policy": args.policy, "reward": args.reward or "strategy default"}
    write_json(args.json, payload | {"results": [asdict(r) for r in results]}, indent=1)


if __name__ == "__main__":
    main()
