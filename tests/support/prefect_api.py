"""Calls to the Prefect API of a served runbook (`tests.support.served`): create a run, wait for its end."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.support.served import Served

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def api(method: str, url: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    """One API call, retried on 503: Prefect's SQLite answers "database is locked" that way (its client retries).

    `headers`: the server's auth string (`LocalServer.headers`); every server these tests start wants one.
    """
    for attempt in range(10):
        response = httpx.request(method, url, headers=headers, timeout=10, **kwargs)
        if response.status_code != 503:
            return response
        time.sleep(0.2 * (attempt + 1))
    return response


def create_run(served: Served, parameters: dict[str, Any], deployment: str = "rollback/rollback") -> str:
    dep = api("GET", f"{served.api}/deployments/name/{deployment}", served.headers).json()
    body = {"parameters": parameters}
    answer = api("POST", f"{served.api}/deployments/{dep['id']}/create_flow_run", served.headers, json=body)
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["id"])


def wait_terminal(served: Served, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api("GET", f"{served.api}/flow_runs/{run_id}", served.headers).json()
        if run["state"] and run["state"]["type"] in TERMINAL:
            return dict(run)
        time.sleep(0.25)
    raise AssertionError(f"run {run_id} did not end; serve log:\n{served.log.read_text()[-3000:]}")
