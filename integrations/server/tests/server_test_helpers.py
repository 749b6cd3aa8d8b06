"""Helpers for the server tests: start a real ``align-chains serve`` process on a free
127.0.0.1 port and wait until /health says it is ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``align-chains serve`` process."""

    process: subprocess.Popen
    url: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.log.read_text()


def launch_server(args: list[str], log: Path, *, env: dict[str, str] | None = None) -> Server:
    """Start ``python -m align_chains.cli serve ARGS`` on a free port (not yet ready)."""
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(HERE), full_env.get("PYTHONPATH", "")) if p
    )
    handle = log.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "align_chains.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            f"{port}",
            *args,
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=REPO,
    )
    return Server(process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, wait_s: float = 300) -> Server:
    """Return once /health says ok; raise with the server's log if it exits or stalls."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {server.process.returncode}:\n{server.log.read_text()}"
            )
        try:
            if server.health()["status"] == "ok":
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"the server did not become ready in {wait_s} s:\n{server.log.read_text()}")


def start_server(
    args: list[str], log: Path, *, env: dict[str, str] | None = None, wait_s: float = 300
) -> Server:
    return wait_ready(launch_server(args, log, env=env), wait_s)


API_KEY = "sk-test-abc123-never-logged"
