"""`runbook serve` for the benchmarks: started against a local Prefect server, ready once it can take alerts."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from runbook.serve import LocalServer
from tests.triggers.conftest import free_port, server_env

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def runbook_serve(server: LocalServer, config: Path, work: Path, alert_token: str) -> Iterator[str]:
    """Run `runbook serve --config CONFIG` (log in WORK/serve.log); yield its Alertmanager endpoint once ready."""
    port = free_port()
    env = server_env(str(work / "serve-home"), **server.client_env(), RUNBOOK_ALERT_TOKEN=alert_token)
    with (work / "serve.log").open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "runbook.cli", "serve", "--config", str(config), "--alerts-port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
                    # The endpoint may answer before the runner has registered the deployments.
                    deployment = httpx.get(
                        f"{server.api_url}/deployments/name/rollback/rollback", headers=server.headers, timeout=2
                    )
                    if ready and deployment.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            yield f"http://127.0.0.1:{port}/alerts/alertmanager"
        finally:
            serve.terminate()
            serve.wait(timeout=30)
