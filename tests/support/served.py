"""`runbook serve` against a real Prefect server, in front of a sandbox, as the trigger tests run it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commands.serve import LocalServer
from sandbox.process import free_port
from sandbox.serving import runbook_serve
from sandbox.world import Sandbox

ALERT_TOKEN = "alert-token-for-tests-0123456789"


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
def serving(
    server: LocalServer, sandbox: Sandbox, workdir: Path, *, alerts: bool = True, **settings: Any
) -> Iterator[Served]:
    """`runbook serve` against `server` for the sandbox, until its deployments (and alert endpoint) are up.

    `settings`: top-level sections of the configuration to set (e.g. `ready_target={...}`). Without
    `ready_target`, none is kept: the serves of a package share its Prefect server, and a ready target is one
    Variable per service and environment (another serve's, made under its configuration, would not be used).
    """
    data = sandbox.config_data()
    data["ready_target"] = {"enabled": False}
    data.update(settings)
    if alerts:
        data["alerts"] = {"token": {"env": "RUNBOOK_ALERT_TOKEN"}}
    config = sandbox.write_config(data, "served.yaml")
    token = ALERT_TOKEN if alerts else None
    with runbook_serve(server, config, workdir, alert_token=token, port=free_port()) as running:
        yield Served(server, sandbox, running.alerts_url, running.process, running.log)
