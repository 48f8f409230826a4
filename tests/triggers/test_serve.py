"""`runbook serve` on a real Prefect server: runs created through the API run, one rollback at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from commands.serve import SERVER_FILE
from commands.warm import CLAIMED
from runbook.processes import stop_process
from sandbox.process import free_port
from sandbox.serving import wait_for
from tests.support.prefect_api import api, create_run, wait_terminal
from tests.support.served import Served

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_created_through_the_api_completes(served: Served) -> None:
    sandbox = served.sandbox
    before = len(sandbox.github.dispatches())
    created = time.monotonic()
    run = wait_terminal(served, create_run(served, {"service": "shop", "environment": "production", "reason": "api"}))
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert len(sandbox.github.dispatches()) == before + 1
    assert httpx.get(f"{sandbox.app.url}/health", timeout=5).status_code == 200
    started = run["start_time"] and run["expected_start_time"]
    assert started, run
    # Claimed and run by serve's warm process (commands/warm.py), not by a new process of the runner.
    states = api("GET", f"{served.api}/flow_run_states/?flow_run_id={run['id']}", served.headers).json()
    [pending] = [s["message"] for s in states if s["type"] == "PENDING"]
    assert pending.startswith(f"{CLAIMED} (")
    print(f"API-created run: {time.monotonic() - created:.1f} s from creation to Completed")


def test_two_concurrent_rollbacks_of_one_service_deploy_once(served: Served) -> None:
    sandbox = served.sandbox
    sandbox.app.broken.clear()
    sandbox.github.run_step_seconds = 3.0  # the first run's deploy holds the slot long enough to overlap
    try:
        before = len(sandbox.github.dispatches())
        first = create_run(served, {"service": "shop", "environment": "production", "sha": sandbox.commits.all[0]})
        second = create_run(served, {"service": "shop", "environment": "production", "sha": sandbox.commits.all[1]})
        states = sorted(wait_terminal(served, run_id)["state"]["type"] for run_id in (first, second))
    finally:
        sandbox.github.run_step_seconds = 0.05
    assert states == ["CANCELLED", "COMPLETED"], states
    assert len(sandbox.github.dispatches()) == before + 1


def test_serve_starts_its_own_server_on_the_port_asked_and_the_commands_here_use_it(
    served: Served, tmp_path: Path
) -> None:
    """No PREFECT_API_URL: `serve --prefect-port` starts a server there, says where, and `history` from the same
    home reads it (not a temporary server of its own); at the stop, the record of where it was is gone."""
    port = free_port()
    home = tmp_path / "prefect-home"
    config = served.sandbox.write_config(
        {**served.sandbox.config_data(), "ready_target": {"enabled": False}}, "own.yaml"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "PREFECT_UI_", "PREFECT_SERVER_"))}
    env["PREFECT_HOME"] = str(home)
    cli = [sys.executable, "-m", "commands.cli"]
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [*cli, "serve", "--config", str(config), "--prefect-port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        record = home / SERVER_FILE
        wait_for(record.is_file, 90, "serve's own Prefect server")
        assert json.loads(record.read_text())["api_url"] == f"http://127.0.0.1:{port}/api"
        done = subprocess.run(
            [*cli, "history", "--config", str(config), "--service", "shop", "--environment", "production"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"the Prefect server of `runbook serve` at http://127.0.0.1:{port}" in done.stdout, done.stdout
    finally:  # whether it has finished starting or not: a stop while starting cleans up too
        stop_process(process, timeout=20)
    said = (tmp_path / "serve.log").read_text()
    assert f"Prefect UI: http://127.0.0.1:{port} (log in with the auth string in {home}/" in said, said[-2000:]
    assert not record.exists()
    assert process.returncode == 0
    with pytest.raises(httpx.ConnectError):  # its Prefect server stopped with it
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
