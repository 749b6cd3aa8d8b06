"""Fair turns on one replica: a short request sent during a long one, ``--max-running 1`` vs ``2``.

Two parts, each against two ``align-chains serve`` processes on 127.0.0.1 that differ only in
``--max-running`` (``1``: one batched run after the other, the server before fair turns; ``2``: two
runs in flight, taking turns on the policy between forward passes):

1. **Latency** (``--strategy darwin``): a long DARWIN request (``--long``, seeded) and, ``--delay``
   seconds after it, a four-token request (``--short``: ``max_tokens=4`` and DARWIN's smallest
   settings). Reported per server: the short request's latency (median over ``--repeats``
   rounds), the long one's, and the short one's own run time with nothing else running. The
   long request is seeded, so both servers must give it the same answer (checked: taking turns
   may not change a result).
2. **Throughput** (``--strategy best-of-n``, n=2, 16 tokens, ``--max-batch 8``): the load of
   ``bench_server_load.py`` (its prompts, clients sending back to back) at ``--levels`` clients;
   throughput and p95 per server, the ratio ``max_running=2 / max_running=1`` (must not fall by
   more than 10%).

The servers take turns round by round (the order alternating) so machine noise hits both alike.

Run from the repository root, one torch thread per server::

    OMP_NUM_THREADS=1 python benchmarks/bench_fair_turns.py --repeats 3 --json docs/bench_fair_turns.json
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import httpx
from bench_server_load import REPO, LevelResult, free_port, percentile, run_level, serve_env, wait_ready
from common import add_common_options, machine, machine_line, markdown_table, ratio, write_json

SERVERS = {"max_running=1": ["--max-running", "1"], "max_running=2": ["--max-running", "2"]}
LONG = {"max_tokens": 96, "n": 4, "k": 2, "m": 32, "cycles": 1, "mutation_max_tokens": 64, "seed": 11}
SHORT = {"max_tokens": 4, "n": 1, "k": 1, "m": 4, "cycles": 1, "mutation_max_tokens": 16, "seed": 5}
LONG_PROMPT = "Write a detailed guide to planning a week-long hiking trip in the mountains."
SHORT_PROMPT = "Say hello."


def launch(name: str, strategy: list[str], extra: list[str], logs: Path) -> tuple[subprocess.Popen, str]:
    """``align-chains serve`` on a free port with ``strategy`` options and ``extra`` (not yet ready)."""
    port = free_port()
    env = serve_env()
    command = [
        sys.executable, "-m", "align_chains.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--max-concurrency", "64", "--timeout", "600", *strategy, *extra,
    ]  # fmt: skip
    handle = (logs / f"{name}.log").open("w")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return process, f"http://127.0.0.1:{port}"


def ask(url: str, prompt: str, settings: dict) -> tuple[int, float, str]:
    """(status, latency in seconds, answer text)."""
    openai = {k: v for k, v in settings.items() if k in ("max_tokens", "seed")}
    own = {k: v for k, v in settings.items() if k not in openai}
    messages = [{"role": "user", "content": prompt}]
    body = {"messages": messages, "temperature": 0.7, **openai, "align_chains": own}
    began = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=900)
    latency = time.perf_counter() - began
    text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
    return r.status_code, latency, text


def one_round(url: str, long: dict, short: dict, delay_s: float) -> dict:
    """The short request alone, then the long one with the short one sent ``delay_s`` into it."""
    alone = ask(url, SHORT_PROMPT, short)
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("long", ask(url, LONG_PROMPT, long)))
    worker.start()
    time.sleep(delay_s)
    during = ask(url, SHORT_PROMPT, short)
    worker.join()
    long_status, long_s, long_text = outcome["long"]
    statuses = [alone[0], during[0], long_status]
    turns = httpx.get(f"{url}/health", timeout=10).json()["batches"]["turns_handed_over"]
    return {
        "short_alone_s": alone[1],
        "short_during_long_s": during[1],
        "long_s": long_s,
        "long_text": long_text,
        "statuses": statuses,
        "turns_handed_over_total": turns,
    }


def latency_part(args: argparse.Namespace, logs: Path) -> dict[str, list[dict]]:
    strategy = ["--strategy", "darwin", "--policy", args.policy]
    servers = {name: launch(f"darwin-{name}", strategy, extra, logs) for name, extra in SERVERS.items()}
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for name, (process, url) in servers.items():
            wait_ready(process, url, logs / f"darwin-{name}.log")
            ask(url, SHORT_PROMPT, args.short)  # warm-up, untimed
        for repeat in range(args.repeats):
            order = list(servers.items()) if repeat % 2 == 0 else list(servers.items())[::-1]
            for name, (_, url) in order:
                result = one_round(url, args.long, args.short, args.delay)
                rounds[name].append(result)
                print(
                    f"{name} round {repeat}: short alone {result['short_alone_s']:.2f} s, during the long "
                    f"one {result['short_during_long_s']:.2f} s; long {result['long_s']:.2f} s; "
                    f"statuses {result['statuses']}",
                    flush=True,
                )
    finally:
        stop(servers)
    return rounds


def throughput_part(args: argparse.Namespace, logs: Path) -> list[LevelResult]:
    strategy = ["--strategy", "best-of-n", "--policy", args.policy, "-o", "n=2", "-o", "max_tokens=16"]
    extra = ["--max-batch", "8"]
    servers = {name: launch(f"load-{name}", strategy, extra + more, logs) for name, more in SERVERS.items()}
    results: list[LevelResult] = []
    try:
        for name, (process, url) in servers.items():
            wait_ready(process, url, logs / f"load-{name}.log")
            ask(url, SHORT_PROMPT, {})  # warm-up, untimed
        for clients in args.levels:
            for repeat in range(args.repeats):
                order = list(servers.items()) if repeat % 2 == 0 else list(servers.items())[::-1]
                for name, (_, url) in order:
                    result = run_level(name, url, clients, max(2, -(-args.requests // clients)))
                    result.repeat = repeat
                    results.append(result)
                    print(
                        f"{name} {clients} clients (round {repeat}): {result.throughput_rps:.2f} req/s, "
                        f"p95 {result.p95_s:.2f} s, statuses {result.statuses}",
                        flush=True,
                    )
    finally:
        stop(servers)
    return results


def stop(servers: dict[str, tuple[subprocess.Popen, str]]) -> None:
    for process, _ in servers.values():
        process.terminate()
        process.wait(timeout=30)


def latency_rows(rounds: dict[str, list[dict]]) -> list[list[str]]:
    rows = []
    for name, results in rounds.items():
        during = statistics.median(r["short_during_long_s"] for r in results)
        alone = statistics.median(r["short_alone_s"] for r in results)
        rows.append([
            name, str(len(results)), f"{alone:.2f}", f"{during:.2f}", f"{ratio(during, alone):.1f}x",
            f"{statistics.median(r['long_s'] for r in results):.2f}",
            str(results[-1]["turns_handed_over_total"]),
        ])  # fmt: skip
    return rows


def throughput_rows(results: list[LevelResult], levels: list[int]) -> list[list[str]]:
    rows = []
    one, two = SERVERS
    for clients in levels:
        a = [r for r in results if r.server == one and r.clients == clients]
        b = [r for r in results if r.server == two and r.clients == clients]
        pairs = [(x, y) for x in a for y in b if x.repeat == y.repeat]
        if not pairs:
            continue
        fivexx = sum(n for r in a + b for s, n in r.statuses.items() if s.startswith("5") or s == "-1")
        rows.append([
            str(clients), str(len(pairs)), f"{statistics.median(r.throughput_rps for r in a):.2f}",
            f"{statistics.median(r.throughput_rps for r in b):.2f}",
            f"{statistics.median(ratio(y.throughput_rps, x.throughput_rps) for x, y in pairs):.2f}x",
            f"{percentile(sorted(v for r in a for v in r.latencies), 0.95):.2f} / "
            f"{percentile(sorted(v for r in b for v in r.latencies), 0.95):.2f}",
            str(fivexx),
        ])  # fmt: skip
    return rows


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--long", type=json.loads, default=LONG, help=f"long request's settings ({LONG})")
    parser.add_argument("--short", type=json.loads, default=SHORT, help=f"short request's settings ({SHORT})")
    parser.add_argument("--delay", type=float, default=3.0, help="seconds from the long request to the short")
    parser.add_argument("--levels", type=lambda s: [int(c) for c in s.split(",")], default=[4, 8])
    parser.add_argument("--requests", type=int, default=32, help="load requests per level and round")
    parser.add_argument("--skip-load", action="store_true", help="only the latency part")
    add_common_options(parser, repeats=3, seed=None, repeats_help="rounds (server order alternates)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its servers
    logs = Path(tempfile.mkdtemp(prefix="fair-turns-"))
    uptime_before = Path("/proc/loadavg").read_text().split()[:3]
    rounds = latency_part(args, logs)
    load = [] if args.skip_load else throughput_part(args, logs)
    uptime_after = Path("/proc/loadavg").read_text().split()[:3]
    env = machine(load_average_before=uptime_before, load_average_after=uptime_after)
    same = {name: {r["long_text"] for r in results} for name, results in rounds.items()}
    answers_agree = len(set.union(*same.values())) == 1
    print(f"\n{machine_line(env)}; load average before {uptime_before}, after {env['load_average_after']}")
    header = ["server", "rounds", "short alone (s)", "short during long (s)", "during / alone",
              "long (s)", "turns handed over"]  # fmt: skip
    print(markdown_table(header, latency_rows(rounds)))
    print(f"long request's answer identical on both servers and every round: {answers_agree}")
    if load:
        header = ["clients", "rounds", "max_running=1 req/s", "max_running=2 req/s", "ratio (median)",
                  "p95 1 / 2 (s)", "5xx"]  # fmt: skip
        print(markdown_table(header, throughput_rows(load, args.levels)))
    payload = {"machine": env, "policy": args.policy, "long": args.long, "short": args.short}
    payload |= {"delay_s": args.delay}
    payload |= {"latency": rounds, "answers_agree": answers_agree, "load": [asdict(r) for r in load]}
    write_json(args.json, payload, indent=1)


if __name__ == "__main__":
    main()
