"""`runbook serve` keeps the ready rollback target: alerts take the ready path; rollbacks and deploys refresh it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from commands.serve import LocalServer
from sandbox.alert_bodies import alertmanager_body
from sandbox.world import ENVIRONMENT, REPOSITORY, SERVICE, Sandbox
from tests.support.prefect_api import api, wait_terminal
from tests.support.served import ALERT_TOKEN, Served, serving
from tests.support.waiting import wait_for

VARIABLE = f"ready-target-{SERVICE}-{ENVIRONMENT}"


def _ready(served: Served) -> dict[str, Any] | None:
    answer = api("GET", f"{served.api}/variables/name/{VARIABLE}", served.headers)
    return answer.json()["value"] if answer.status_code == 200 else None


def _ready_for(served: Served, running: str) -> dict[str, Any]:
    return wait_for(
        lambda: (ready := _ready(served)) is not None and ready["running"] == running and ready,
        timeout=30,
        what=f"serve's ready target for {running[:7]}",
    )


def _task_names(served: Served, run_id: str) -> set[str]:
    body = {"flow_runs": {"id": {"any_": [run_id]}}}
    runs = api("POST", f"{served.api}/task_runs/filter", served.headers, json=body).json()
    return {run["name"].rsplit("-", 1)[0] for run in runs}


def _postmortem(served: Served, run_id: str) -> str:
    body = {"artifacts": {"key": {"any_": [f"rollback-{SERVICE}-{ENVIRONMENT}"]}, "flow_run_id": {"any_": [run_id]}}}
    [artifact] = api("POST", f"{served.api}/artifacts/filter", served.headers, json=body).json()
    return str(artifact["data"])


def test_an_alert_takes_the_ready_path_and_the_target_follows_rollbacks_and_deploys(
    prefect_api: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("ready")
    with (
        Sandbox(workdir / "sandbox", run_step_seconds=0.05) as sandbox,
        serving(prefect_api, sandbox, workdir, ready_target={"check_seconds": 1}) as served,
    ):
        broken, good = sandbox.commits.broken, sandbox.commits.last_known_good
        ready = _ready_for(served, broken)  # prepared at serve's start
        assert ready["sha"] == good

        body = alertmanager_body(SERVICE, starts_at=datetime.now(UTC), fingerprint=uuid.uuid4().hex[:16])
        answer = httpx.post(
            f"{served.alerts_url}/alerts/alertmanager",
            json=body,
            headers={"Authorization": f"Bearer {ALERT_TOKEN}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        run_id = answer.json()["alerts"][0]["run_id"]
        run = wait_terminal(served, run_id)

        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert sandbox.app.version == good and len(sandbox.github.dispatches()) == 1
        assert "path: ready target" in _postmortem(served, run_id)
        tasks = _task_names(served, run_id)
        assert "check-ready-target" in tasks and not {"resolve-sha", "verify-image"} & tasks
        assert _ready_for(served, good)["digest"].startswith("sha256:")  # refreshed after the rollback

        # CI deploys a new version: serve prepares the target for it within its check interval.
        new = sandbox.github.add_commit(REPOSITORY, "A new release")
        sandbox.push(new)
        sandbox.github.add_deployment(REPOSITORY, new, ENVIRONMENT, state="success")
        sandbox.app.deploy(new)
        assert _ready_for(served, new)["sha"] == good
