"""`runbook serve`: every deployment and the alert endpoint, served from this machine.

The Prefect API is the one in the usual settings (`PREFECT_API_URL`); with none, a local Prefect server
(SQLite, in PREFECT_HOME) is started and stopped with this command, UI included. The runner polls every
second (Prefect's default is 10 s) so a run created from the UI, an alert or the API starts within about
a second.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from runbook.config import CONFIG_ENV_VAR, load_config
from runbook.errors import RunbookError
from runbook.processes import stop_process

POLL_SETTINGS = {
    # Whole seconds; 1 is the minimum. Created run -> Running: 7.2 s median at 10, 1.5 s at 1 (PREFECT-NOTES).
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
}


@contextmanager
def local_prefect_server(
    host: str = "127.0.0.1", port: int = 4200, timeout: float = 60, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start `prefect server start` (SQLite in PREFECT_HOME) and yield its API URL; stop it afterwards."""
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise RunbookError(
                f"port {port} on {host} is taken, and PREFECT_API_URL is not set",
                hint=f"set PREFECT_API_URL=http://{host}:{port}/api if a Prefect server runs there, or free the port",
            )
    api = f"http://{host}:{port}/api"
    # The UI asks the server where the API is; the server does not derive that from --port.
    env = {**(env if env is not None else os.environ), "PREFECT_UI_API_URL": api}
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RunbookError(
                    "the local Prefect server exited at start",
                    hint=(process.stderr.read().decode(errors="replace")[-800:] if process.stderr else ""),
                )
            try:
                if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RunbookError(f"the local Prefect server did not answer within {timeout:.0f} s")
            time.sleep(0.3)
        yield api
    finally:
        stop_process(process)
        if process.stderr:
            process.stderr.close()


def _alert_endpoint(host: str, port: int) -> threading.Thread | None:
    """Serve the alert endpoint in a thread, when the configuration has an `alerts` section."""
    config = load_config()
    if config.alerts is None:
        return None
    import uvicorn

    from runbook.alerts import PrefectLauncher, create_app

    app = create_app(config, PrefectLauncher("rollback/rollback"))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="alert-endpoint", daemon=True)
    thread.start()
    return thread


def serve(config_path: Path, *, alerts_host: str = "127.0.0.1", alerts_port: int = 8787) -> None:
    """Serve the deployments (and the alert endpoint) until interrupted."""
    os.environ[CONFIG_ENV_VAR] = str(config_path.resolve())
    for key, value in POLL_SETTINGS.items():
        os.environ.setdefault(key, value)
    config = load_config()  # a bad file stops here, with its message, before anything starts
    with _api() as api:
        os.environ["PREFECT_API_URL"] = api
        from prefect import serve as prefect_serve

        from deployments.spec import runner_deployments

        deployments = runner_deployments(config)
        if _alert_endpoint(alerts_host, alerts_port):
            print(f"alert endpoint: http://{alerts_host}:{alerts_port}/alerts/alertmanager (and /alerts/grafana)")
        print(f"Prefect API: {api}; deployments: {', '.join(d.name for d in deployments)}", flush=True)
        prefect_serve(*deployments)


@contextmanager
def _api() -> Iterator[str]:
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    with local_prefect_server() as api:
        yield api
