"""`runbook status`, `runbook history` and `runbook rollback --require-approval/--incident`, against real servers.

One sandbox for the module and the session's Prefect test server. Three rollbacks are run through the CLI, as a
person types them: one refused (a SHA unknown to GitHub), one recovered (with `--incident`), one not approved in
time (`--require-approval --approval-timeout 1`); then an `incident` of that one service (its rollback is a
subflow). Each recovered rollback prepares the ready-target Variable, as it always does. `status` and `history`
then read them back from the Prefect API, in process (CliRunner).

The service is named `till` here, not `shop`: other modules' rollbacks of `shop` share the session's server.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.settings import PREFECT_API_URL
from typer.testing import CliRunner, Result

from commands.cli import app
from flows.incident import incident
from runbook.config import using_config
from sandbox.world import ENVIRONMENT, SERVICE, Sandbox
from tests.support.rollback import artifacts

pytestmark = pytest.mark.usefixtures("prefect_server")

TILL, KIOSK = "till", "kiosk"  # `kiosk` is configured and never rolled back
NOT_APPROVED = "nobody approved the rollback within 1 s: nothing was deployed"


@dataclass
class World:
    """The sandbox, its configuration (`till` and `kiosk`), and what each CLI rollback did."""

    sandbox: Sandbox
    config: Path
    exits: list[int]  # refused, recovered, not approved
    dispatches: list[int]  # workflow dispatches in GitHub after each, and after the incident
    incident_run: str = ""

    def cli(self, *arguments: str) -> Result:
        # As a shell given the test server's address: the command says where it reads from what it is given.
        api = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
        return CliRunner().invoke(app, [*arguments, "--config", str(self.config)], env=api)

    def history(self, *arguments: str) -> list[dict[str, Any]]:
        result = self.cli("history", "--json", *arguments)
        assert result.exit_code == 0, result.output
        rollbacks: list[dict[str, Any]] = json.loads(result.stdout)["rollbacks"]
        return rollbacks


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with Sandbox(tmp_path_factory.mktemp("status"), run_step_seconds=0.05) as sandbox:
        data = sandbox.config_data()
        shop = data["services"].pop(SERVICE)
        data["services"] = {TILL: shop, KIOSK: copy.deepcopy(shop)}
        world = World(sandbox, sandbox.write_config(data, "status.yaml"), [], [])
        rollback = ("rollback", "--service", TILL, "--environment", ENVIRONMENT)
        for extra in (
            ("--sha", "deadbee"),
            ("--reason", "5xx spike", "--incident", "INC-1"),
            ("--reason", "again", "--require-approval", "--approval-timeout", "1"),
        ):
            world.exits.append(world.cli(*rollback, *extra).exit_code)
            world.dispatches.append(len(sandbox.github.dispatches()))
        with using_config(world.config):
            services = [{"service": TILL, "environment": ENVIRONMENT}]
            state = incident(services=services, reason="5xx again", incident="INC-2", return_state=True)
        assert state.is_completed(), state.message
        world.incident_run = str(state.state_details.flow_run_id)
        world.dispatches.append(len(sandbox.github.dispatches()))
        yield world


def test_rollback_options_reach_the_flow(world: World) -> None:
    sandbox = world.sandbox
    assert world.exits == [1, 0, 1]
    # Not approved in time: nothing dispatched after the recovered rollback's one (the incident's came later).
    assert world.dispatches == [0, 1, 1, 2]
    assert any(NOT_APPROVED in message.text for message in sandbox.slack.messages)
    _incident, not_approved, recovered, _refused = world.history("--service", TILL)
    assert not_approved["failed_step"] == "approval" and NOT_APPROVED in not_approved["failure"]
    assert not_approved["digest"].startswith("sha256:")  # verified, then not deployed
    # --incident reaches the run's journal, hence its post-mortem.
    assert recovered["incident"] == "INC-1"
    markdown = str(artifacts(UUID(recovered["run_id"]))["rollback-till-production"].data)
    assert "- **Incident:** INC-1" in markdown and "- **Reason given:** 5xx spike" in markdown


def test_history_lists_the_rollbacks_newest_first(world: World) -> None:
    commits = world.sandbox.commits
    rollbacks = world.history()
    assert [r["outcome"] for r in rollbacks] == ["recovered", "failed", "recovered", "failed"]
    assert [r["started_at"] for r in rollbacks] == sorted((r["started_at"] for r in rollbacks), reverse=True)
    member, not_approved, recovered, refused = rollbacks
    assert (recovered["from_sha"], recovered["to_sha"]) == (commits.broken, commits.last_known_good)
    assert recovered["digest"].startswith("sha256:") and recovered["time_to_recovery"] > 0
    assert recovered["trigger"] == "manual" and recovered["run_url"].endswith(recovered["run_id"])
    assert not_approved["to_sha"] == commits.all[1] and not_approved["time_to_recovery"] is None
    assert refused["failed_step"] == "resolve-sha" and "deadbee" in refused["failure"]
    assert "does not exist" in refused["failure"] and refused["to_sha"] is None
    # One service of an incident: a `rollback` run too, its incident run named.
    assert (member["incident"], member["incident_run"]) == ("INC-2", world.incident_run)
    assert (member["from_sha"], member["to_sha"]) == (commits.last_known_good, commits.all[1])

    lines = world.cli("history").stdout.splitlines()
    assert lines[0].split() == ["when", "service/env", "trigger", "from", "->", "to", "outcome", "TTR", "run"]
    # Each run a line, newest first; under a run that did not recover, why.
    assert f"incident INC-2, in incident run {world.incident_run[:8]}" in lines[1] and "recovered" in lines[1]
    assert "failed at approval" in lines[2] and not_approved["run_url"] in lines[2]
    assert lines[3].strip() == f"why: {not_approved['failure']}"
    good, broken = commits.last_known_good[:7], commits.broken[:7]
    assert f"{broken} -> {good}" in lines[4] and "recovered" in lines[4] and "manual, incident INC-1" in lines[4]
    assert f"{recovered['time_to_recovery']:.1f} s" in lines[4] and recovered["run_url"] in lines[4]
    assert "failed at resolve-sha" in lines[5] and "why: commit deadbee does not exist" in lines[6]
    assert len(lines) == 7
    assert len(world.cli("history", "--limit", "2").stdout.splitlines()) == 4  # header, 2 runs, 1 why


def test_status_says_what_runs_what_is_ready_and_the_last_rollbacks(world: World) -> None:
    commits = world.sandbox.commits
    result = world.cli("status", "--service", TILL)
    assert result.exit_code == 0, result.output
    text = result.stdout
    # The incident's rollback prepared the next way back: from the version it deployed, the one before it.
    assert f"running:       {commits.all[1][:12]} (read from GitHub Deployments" in text
    assert "deployed by the rollback run" in text
    assert f"ready target:  {commits.all[0][:12]} 'Initial shop' (last known good)" in text
    last = text.split("last rollbacks:\n", 1)[1].splitlines()
    assert "recovered" in last[1] and "failed at approval" in last[2] and "recovered" in last[4]
    assert len(last) == 5  # 3 rollbacks (the refused one is the 4th), one why

    [till] = json.loads(world.cli("status", "--json", "--service", TILL).stdout)["services"]
    assert till["running"]["sha"] == commits.all[1] and till["running"]["source"] == "GitHub Deployments"
    ready = till["ready_target"]
    assert ready["sha"] == commits.all[0] and ready["digest"].startswith("sha256:") and not ready["stale"]
    assert ready["digest"] in text
    assert [r["outcome"] for r in till["last_rollbacks"]] == ["recovered", "failed", "recovered"]


def test_absent_facts_are_said_in_plain_words(world: World) -> None:
    result = world.cli("status", "--environment", ENVIRONMENT)
    assert result.exit_code == 0, result.output
    kiosk = result.stdout.split(f"{KIOSK}/{ENVIRONMENT}\n", 1)[1].split(f"\n\n{TILL}/", 1)[0]
    assert "running:       unknown here" in kiosk
    assert "none kept: `runbook serve` prepares one" in kiosk and "--dry-run" in kiosk
    # Where it looked: the Prefect API `rollback` uses (here the session's test server, named by its URL).
    assert "last rollbacks: none recorded in the Prefect server at http://127.0.0.1:" in kiosk
    assert world.history("--service", KIOSK) == []
    assert world.cli("history", "--service", KIOSK).stdout.startswith(f"no rollback recorded for {KIOSK} in the ")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (("status", "--service", "nope"), "unknown service 'nope': choose one of ['kiosk', 'till']"),
        (("history", "--environment", "staging"), "no configured service has an environment 'staging'"),
        (("status", "--service", TILL, "--environment", "staging"), "unknown environment 'staging' for service"),
    ],
)
def test_an_unknown_service_or_environment_exits_2(world: World, arguments: tuple[str, ...], expected: str) -> None:
    result = world.cli(*arguments)
    assert result.exit_code == 2 and expected in result.stderr and "Traceback" not in result.output
