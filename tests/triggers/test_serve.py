"""`runbook serve` on a real Prefect server: runs created through the API run, one rollback at a time."""

from __future__ import annotations

import time

import httpx

from commands.warm import CLAIMED
from tests.support.prefect_api import api, create_run, wait_terminal
from tests.support.served import Served


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
