"""A real Prefect server (`prefect server start`) and `runbook serve` in front of the sandbox, for trigger tests."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from commands.serve import LocalServer, local_prefect_server
from sandbox.process import free_port
from sandbox.serving import runbook_serve, server_env
from sandbox.world import Sandbox

ALERT_TOKEN = "alert-token-for-tests-0123456789"


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


@contextmanager
def serving(server: LocalServer, sandbox: Sandbox, workdir: Path, *, alerts: bool = True) -> Iterator[Served]:
    """`runbook serve` against `server` for the sandbox, until its deployments (and alert endpoint) are up."""
    data = sandbox.config_data()
    if alerts:
        data["alerts"] = {"token": {"env": "RUNBOOK_ALERT_TOKEN"}}
    config = sandbox.write_config(data, "served.yaml")
    token = ALERT_TOKEN if alerts else None
    with runbook_serve(server, config, workdir, alert_token=token, port=free_port()) as running:
        yield Served(server, sandbox, running.alerts_url, running.process, running.log)


@pytest.fixture(scope="package")
def served(prefect_api: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("served")
    with Sandbox(workdir / "sandbox", run_step_seconds=0.05) as sandbox, serving(prefect_api, sandbox, workdir) as s:
        yield s
