"""`runbook serve` as a child process against a real Prefect server, for the tests and the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from commands.serve import LocalServer, local_prefect_server
from runbook.errors import RunbookError
from runbook.processes import stop_process
from sandbox.many_services import ManyServicesSandbox
from sandbox.postgres import PostgresServer
from sandbox.process import free_port

#: The databases a Prefect server of the benchmarks can keep its state in.
Database = Literal["sqlite", "postgresql"]
#: The setting Prefect 3.9 reads for the server's database (PREFECT_API_DATABASE_CONNECTION_URL: its older alias).
DATABASE_URL_SETTING = "PREFECT_SERVER_DATABASE_CONNECTION_URL"

ROOT = Path(__file__).resolve().parent.parent


def server_env(home: str, **extra: str) -> dict[str, str]:
    """The environment of a Prefect process of these tests: own home, no telemetry, no test harness settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": home, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.update(extra)
    return env


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Until `check()` is true (HTTP errors count as not yet); AssertionError naming `what` after `timeout`."""
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
def prefect_server(
    home: str, *, timeout: float = 120, database_url: str | None = None, **extra: str
) -> Iterator[LocalServer]:
    """A real `prefect server start` with its own home, on a free port (SQLite unless `extra` says otherwise).

    `database_url`: its database instead (`PREFECT_SERVER_DATABASE_CONNECTION_URL`, e.g. `PostgresServer.url`).

    A free port is only free until someone binds it: when another server took it while this one started (two
    processes of the tests picked the same), start again on another one.
    """
    if database_url is not None:
        extra[DATABASE_URL_SETTING] = database_url
    for attempt in range(3):
        try:
            with local_prefect_server(port=free_port(), env=server_env(home, **extra), timeout=timeout) as server:
                yield server
                return
        except RunbookError as exc:
            if "served by another Prefect server" not in str(exc) or attempt == 2:
                raise


@dataclass
class ServeProcess:
    """A running `runbook serve`: its process, its log, and its alert endpoint's base URL ('' without one)."""

    process: subprocess.Popen[bytes]
    log: Path
    alerts_url: str


@contextmanager
def runbook_serve(
    server: LocalServer, config: Path, workdir: Path, *, alert_token: str | None = None, port: int
) -> Iterator[ServeProcess]:
    """`runbook serve --config CONFIG` against `server`, until its deployments (and alert endpoint) are up.

    The alert endpoint listens on `port`; it is waited for when `alert_token` is given (the configuration's
    `alerts.token` must then read $RUNBOOK_ALERT_TOKEN).
    """
    log = workdir / "serve.log"
    extra = {"RUNBOOK_ALERT_TOKEN": alert_token} if alert_token else {}
    env = server_env(str(workdir / "prefect-home"), **server.client_env(), **extra)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "commands.cli", "serve", "--config", str(config), "--alerts-port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    alerts_url = f"http://127.0.0.1:{port}" if alert_token else ""
    try:
        try:
            if alert_token:
                wait_for(lambda: httpx.get(f"{alerts_url}/healthz", timeout=1).status_code == 200, 90, "the endpoint")
            # The endpoint may answer before the runner has registered the deployments.
            deployment = f"{server.api_url}/deployments/name/rollback/rollback"
            wait_for(
                lambda: httpx.get(deployment, headers=server.headers, timeout=2).status_code == 200,
                90, "the rollback deployment",
            )  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}; serve log:\n{log.read_text()[-3000:]}") from None
        yield ServeProcess(process, log, alerts_url)
    finally:
        stop_process(process, timeout=20)


@contextmanager
def alerting_world(
    work: Path, *, services: Sequence[str] = (), database: Database = "sqlite"
) -> Iterator[tuple[LocalServer, ManyServicesSandbox, dict[str, Any]]]:
    """A real Prefect server and the sandbox, with a configuration to serve for alerts (the benchmarks').

    The configuration's deploy is quick (the stand-in's workflow runs at once) and has no hold: each alert is a
    new incident. `alerts.token` reads $RUNBOOK_ALERT_TOKEN (`runbook_serve(alert_token=...)` sets it).
    `services`: extra services, each with its own repository, images and app (sandbox/many_services.py), in the
    configuration after the sandbox's `shop`. `database`: the Prefect server's, SQLite in its home or a
    throwaway PostgreSQL cluster (sandbox/postgres.py).
    """
    with ExitStack() as stack:
        database_url = stack.enter_context(PostgresServer()).url if database == "postgresql" else None
        server = stack.enter_context(prefect_server(str(work / "server-home"), database_url=database_url))
        sandbox = stack.enter_context(ManyServicesSandbox(work / "sandbox", services=services, run_step_seconds=0))
        data = sandbox.config_data(
            deploy={"type": "github-actions", "poll_interval_seconds": 0.2, "timeout_seconds": 60}
        )
        data["alerts"] = {"token": {"env": "RUNBOOK_ALERT_TOKEN"}, "hold_minutes": 0}
        yield server, sandbox, data
