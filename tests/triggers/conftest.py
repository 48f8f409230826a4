"""A real Prefect server (`prefect server start`) and `runbook serve` in front of the sandbox, for trigger tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbook.processes import stop_process
from runbook.sandbox.world import Sandbox
from runbook.serve import LocalServer, local_prefect_server

ROOT = Path(__file__).resolve().parents[2]
ALERT_TOKEN = "alert-token-for-tests-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(home: str, **extra: str) -> dict[str, str]:
    """The environment of a Prefect process of these tests: own home, no telemetry, no test harness settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": home, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.update(extra)
    return env


@pytest.fixture(scope="package")
def prefect_api() -> Iterator[LocalServer]:
    """A real `prefect server start` on SQLite, on a free port, wanting the auth string it made in its home."""
    home = tempfile.mkdtemp(prefix="runbook-server-")
    with local_prefect_server(port=free_port(), env=server_env(home), timeout=90) as server:
        yield server


@dataclass
class Served:
    """`runbook serve` running against `server`, with the sandbox it rolls back."""

    server: LocalServer
    sandbox: Sandbox
    alerts_url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def api(self) -> str:
        return self.server.api_url

    @property
    def headers(self) -> dict[str, str]:
        """What a client of the API sends: the server's auth string."""
        return self.server.headers


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def serving(server: LocalServer, sandbox: Sandbox, workdir: Path, *, alerts: bool = True) -> Iterator[Served]:
    """`runbook serve` against `server` for the sandbox, until its deployments (and alert endpoint) are up."""
    data = sandbox.config_data()
    if alerts:
        data["alerts"] = {"token": {"env": "RUNBOOK_ALERT_TOKEN"}}
    config = sandbox.write_config(data, "served.yaml")
    port = free_port()
    log = workdir / "serve.log"
    env = server_env(str(workdir / "prefect-home"), **server.client_env(), RUNBOOK_ALERT_TOKEN=ALERT_TOKEN)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "runbook.cli", "serve", "--config", str(config), "--alerts-port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    alerts_url = f"http://127.0.0.1:{port}" if alerts else ""
    try:
        try:
            if alerts:
                _wait(lambda: httpx.get(f"{alerts_url}/healthz", timeout=1).status_code == 200, 90, "the endpoint")
            deployment = f"{server.api_url}/deployments/name/rollback/rollback"
            _wait(
                lambda: httpx.get(deployment, headers=server.headers, timeout=2).status_code == 200,
                90, "the rollback deployment",
            )  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}; serve log:\n{log.read_text()[-3000:]}") from None
        yield Served(server, sandbox, alerts_url, process, log)
    finally:
        stop_process(process, timeout=20)


@pytest.fixture(scope="package")
def served(prefect_api: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("served")
    with Sandbox(workdir / "sandbox", run_step_seconds=0.05) as sandbox, serving(prefect_api, sandbox, workdir) as s:
        yield s
