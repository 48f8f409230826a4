"""The bad version stays out until a person lets it back: the quarantine guard, and `runbook release`.

The guard is the script of the shipped `deployments/github/quarantine-guard.yml`, taken from the YAML and run as
the runner runs a `shell: python` step (`python <file>`, stdlib only), its environment what the runner would
give it, pointed at the GitHub stand-in. `runbook release` runs the `release` flow under the session's Prefect
server, with real PyGithub and slack-sdk against the stand-ins.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from github.Repository import Repository
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow
from typer.testing import CliRunner, Result

from commands.cli import app
from flows.rollback import rollback
from runbook import hold, quarantine
from runbook import repository as repo_api
from runbook.config import load_config, using_config
from runbook.incident import AlertContext
from sandbox.github_standin import GitHubStandIn
from sandbox.world import CHANNEL, ENVIRONMENT, REPOSITORY, SERVICE, Sandbox

pytestmark = pytest.mark.usefixtures("prefect_server")

GUARD = Path(__file__).resolve().parents[2] / "deployments" / "github" / "quarantine-guard.yml"
REASON = "fixed by the payment hotfix (#42)"
LIFTED_FR = "Quarantaine levée"
CHANNEL_ID = "C0INCIDENT1"


@dataclass(frozen=True)
class Guarded:
    """What one run of the guard's step said: its exit code, its log, its step summary."""

    returncode: int
    stdout: str
    summary: str

    @property
    def error(self) -> str:
        """The `::error` workflow command it printed, its data decoded (%0A is a new line)."""
        [line] = [line for line in self.stdout.splitlines() if line.startswith("::error")]
        return line.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")


def _guard_step() -> dict[str, Any]:
    workflow = yaml.safe_load(GUARD.read_text(encoding="utf-8"))
    [step] = [step for step in workflow["jobs"]["quarantine-guard"]["steps"] if "run" in step]
    assert step["shell"] == "python" and "${{" not in step["run"], "the script reads everything from env:"
    return dict(step)


def guard(api_url: str, token: str, sha: str, *, environment: str = ENVIRONMENT, service: str = SERVICE) -> Guarded:
    """Run the shipped guard's step as the runner would, against `api_url`."""
    step = _guard_step()
    # The step's `env:`, its expressions evaluated as GitHub would for this call.
    evaluated = {
        "${{ secrets.token || github.token }}": token,
        "${{ inputs.sha }}": sha,
        "${{ inputs.environment }}": environment,
        "${{ inputs.service }}": service,
    }
    with tempfile.TemporaryDirectory(prefix="quarantine-guard-") as work:
        script, summary = Path(work) / "step.py", Path(work) / "summary.md"
        script.write_text(step["run"], encoding="utf-8")
        # The runner's own variables, then the step's.
        env = {
            "PATH": os.environ["PATH"],
            "GITHUB_API_URL": api_url,
            "GITHUB_REPOSITORY": REPOSITORY,
            "GITHUB_STEP_SUMMARY": str(summary),
        }
        for name, value in step["env"].items():
            assert "${{" not in str(value) or value in evaluated, f"unexpected expression {value}"
            env[name] = evaluated.get(value, str(value))
        env["RETRY_PAUSE_SECONDS"] = "0"  # the shipped 5 s between tries would only slow the test
        # -I -S: the standard library only, as on a runner (no site-packages of this venv).
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.stderr == "", done.stderr
        return Guarded(done.returncode, done.stdout, summary.read_text(encoding="utf-8") if summary.exists() else "")


def release(sandbox: Sandbox, sha: str, *, service: str = SERVICE, reason: str = REASON) -> Result:
    """`runbook release` as a person types it."""
    arguments = ["release", sha, "--service", service, "--environment", ENVIRONMENT, "--reason", reason]
    return CliRunner().invoke(app, [*arguments, "--config", str(sandbox.config_path)])


@pytest.fixture(autouse=True)
def no_hold_left_behind() -> Iterator[None]:
    """The hold these tests write (an automatic rollback, or one written by hand) must not hold another file's
    alerts later in this worker's session (one Prefect server per session)."""
    yield
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_variable_by_name(hold.variable_name(SERVICE, ENVIRONMENT))


def automatic_rollback(sandbox: Sandbox) -> State:
    """A rollback started by an alert (its run carries the alert, as the alert endpoint makes it), run here."""
    alert = AlertContext(name="HighErrorRate", starts_at=datetime.now(UTC), group_key="{}:{shop}", fingerprints=("f1",))
    with using_config(sandbox.config_path), get_client(sync_client=True) as client:
        # The hold of an automatic rollback of an earlier test in this session must not hold this one.
        with contextlib.suppress(ObjectNotFound):
            client.delete_variable_by_name(hold.variable_name(SERVICE, ENVIRONMENT))
        parameters = {"service": SERVICE, "environment": ENVIRONMENT, "reason": "5xx spike"}
        flow_run = client.create_flow_run(rollback, parameters=parameters, context=alert.to_run_context())
        state: State = run_flow(rollback, flow_run=flow_run, return_type="state")  # type: ignore[assignment]
        return state


def repository(sandbox: Sandbox) -> Repository:
    return repo_api.connect(load_config(sandbox.config_path).github, REPOSITORY)


def statuses_of(sandbox: Sandbox, sha: str) -> list[dict[str, Any]]:
    """The statuses (newest first) of the one deployment of `sha` in the environment."""
    [deployment] = [d for d in sandbox.github.deployments(REPOSITORY, ENVIRONMENT) if d["sha"] == sha]
    statuses: list[dict[str, Any]] = deployment["statuses"]
    return statuses


def test_a_rollback_quarantines_until_a_person_releases_it(sandbox: Sandbox) -> None:
    good, broken = sandbox.commits.last_known_good, sandbox.commits.broken
    api, token = sandbox.github.base_url, sandbox.github_token
    assert guard(api, token, broken).returncode == 0  # deployed, never rolled back from: nothing to hold

    state = automatic_rollback(sandbox)

    assert state.is_completed(), state.message
    [root] = [m for m in sandbox.slack.messages if m.thread_ts is None]
    # (a) The version rolled back from is refused, with what a person needs to let it back.
    refused = guard(api, token, broken)
    assert refused.returncode == 1
    lift = quarantine.lift_command(broken, SERVICE, ENVIRONMENT)
    assert f"{broken} is quarantined in {ENVIRONMENT}" in refused.error
    assert "rolled back by rollback-runbook: 5xx spike" in refused.error and lift in refused.error
    assert str(state.state_details.flow_run_id) in refused.error  # the rollback's run, linked by its status
    assert "Quarantined version" in refused.summary and lift in refused.summary
    assert guard(api, token, good).returncode == 0  # the version rolled back to deploys

    # (b) A person releases it, by its short SHA: recorded in GitHub, told in the automatic rollback's thread.
    released = release(sandbox, broken[:7])

    assert released.exit_code == 0, released.output
    assert f"released {broken} in {SERVICE}/{ENVIRONMENT}" in released.output
    lifted, mark, *_ = statuses_of(sandbox, broken)
    assert (lifted["state"], lifted["description"]) == ("inactive", f"quarantine lifted by rollback-runbook: {REASON}")
    assert lifted["log_url"].startswith(os.environ["PREFECT_UI_URL"])  # the release's run
    assert (mark["state"], mark["description"]) == ("failure", "rolled back by rollback-runbook: 5xx spike")
    told = sandbox.slack.messages[-1]
    assert (told.channel_id, told.thread_ts) == (CHANNEL_ID, root.ts)
    assert LIFTED_FR in told.text and broken[:7] in told.text and REASON in told.text

    # (c) The guard lets it be deployed again.
    allowed = guard(api, token, broken)
    assert allowed.returncode == 0 and "is not quarantined" in allowed.stdout, allowed.stdout
    # (e) Released is not healthy: no last known good until it is deployed and healthy again.
    repo = repository(sandbox)
    assert broken not in repo_api.healthy_shas(repo, ENVIRONMENT) and good in repo_api.healthy_shas(repo, ENVIRONMENT)
    sandbox.github.add_deployment(REPOSITORY, broken, ENVIRONMENT, state="success", description="CI deploy")
    assert broken in repo_api.healthy_shas(repo, ENVIRONMENT)
    # Released once: a second release has nothing to lift.
    again = release(sandbox, broken)
    assert again.exit_code == 1 and "is not quarantined" in again.output


def test_release_of_a_manual_rollback_is_told_in_the_channel_and_the_guard_links_the_run(sandbox: Sandbox) -> None:
    good, broken = sandbox.commits.last_known_good, sandbox.commits.broken
    repo = repository(sandbox)
    rollback_run = "http://127.0.0.1:4200/runs/flow-run/0b7e1c2a"
    # What a rollback records: its rollout, then the bad version's `failure` (here linking the run)...
    payload = {"tool": repo_api.TOOL, "rollback_id": "0b7e1c2a", "digest": "", "image": "", "from_sha": broken}
    repo_api.record_deployment(
        repo,
        sha=good,
        environment=ENVIRONMENT,
        state="success",
        description="rollback",
        log_url=rollback_run,
        payload=payload,
    )
    [bad] = repo_api.deployments_of(repo, broken, ENVIRONMENT)
    deployment = repo.get_deployment(bad.id)
    deployment.create_status("failure", target_url=rollback_run, description="rolled back by rollback-runbook: 5xx")
    # ...and GitHub's own `inactive` above it (another deployment succeeded), which lifts nothing.
    deployment.create_status("inactive", description="")
    # The last automatic rollback is another one: its thread is not this release's.
    other = hold.LastRollback(
        SERVICE, ENVIRONMENT, str(uuid4()), None, good, datetime.now(UTC), None, CHANNEL_ID, "1.0"
    )
    with using_config(sandbox.config_path):
        hold.write_last(other)

    refused = guard(sandbox.github.base_url, sandbox.github_token, broken)

    assert refused.returncode == 1 and f"Rollback run: {rollback_run}" in refused.error

    released = release(sandbox, broken)

    assert released.exit_code == 0, released.output
    told = sandbox.slack.messages[-1]
    assert told.thread_ts is None and told.channel_id == CHANNEL_ID and f"told in {CHANNEL}" in released.output
    assert LIFTED_FR in told.text and rollback_run in told.text and REASON in told.text
    assert guard(sandbox.github.base_url, sandbox.github_token, broken).returncode == 0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("not-a-sha!", "'not-a-sha!' is not a commit SHA: paste the SHA the quarantine guard named"),
        ("good", "is not quarantined in shop/production: none of its deployments there is marked rolled back"),
        ("never-deployed", "is not quarantined in shop/production: it has no deployment there"),
        ("unknown-service", "unknown service"),
    ],
)
def test_release_refuses_before_changing_anything(sandbox: Sandbox, given: str, expected: str) -> None:
    service = SERVICE
    sha = {"good": sandbox.commits.last_known_good, "unknown-service": sandbox.commits.broken}.get(given, given)
    if given == "never-deployed":
        sha = sandbox.github.add_commit(REPOSITORY, "Not deployed yet")
    elif given == "unknown-service":
        service = "payments"
    before = len(sandbox.github.requests)

    refused = release(sandbox, sha, service=service)

    assert refused.exit_code == 1 and "error: " in refused.stderr and expected in refused.stderr, refused.output
    assert "released" not in refused.stdout
    assert sandbox.github.mutating_requests() == [] and sandbox.slack.messages == []
    if given in ("not-a-sha!", "unknown-service"):  # refused on its input: GitHub was not even asked
        assert len(sandbox.github.requests) == before


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    """A GitHub stand-in alone (no registry, no app): the guard talks to GitHub only."""
    with GitHubStandIn(token="guard-token-not-secret") as standin:
        standin.add_repository(REPOSITORY)
        sha = standin.add_commit(REPOSITORY, "first")
        standin.add_deployment(REPOSITORY, sha, ENVIRONMENT, state="success")
        yield standin


def _sha(github: GitHubStandIn) -> str:
    return str(github.deployments(REPOSITORY)[0]["sha"])


def test_the_guard_fails_closed_when_github_cannot_answer(github: GitHubStandIn) -> None:
    sha = _sha(github)
    assert guard(github.base_url, "guard-token-not-secret", sha).returncode == 0

    unauthorized = guard(github.base_url, "an-expired-token", sha)

    assert unauthorized.returncode == 1
    assert "Quarantine unknown" in unauthorized.error and "HTTP 401" in unauthorized.error
    assert "fails closed" in unauthorized.error and "an-expired-token" not in unauthorized.stdout

    github.set_failing(500)
    asked = len(github.requests)
    failing = guard(github.base_url, "guard-token-not-secret", sha)
    github.set_failing(None)

    assert failing.returncode == 1 and "HTTP 500" in failing.error and "githubstatus.com" in failing.error
    assert len(github.requests) - asked == 3  # tried three times before failing closed
    assert "Quarantine unknown" in failing.summary


def test_the_guard_fails_closed_when_github_is_unreachable_or_the_input_is_wrong(github: GitHubStandIn) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{free.getsockname()[1]}"  # nothing listens there
    unreachable = guard(closed, "guard-token-not-secret", _sha(github))
    assert unreachable.returncode == 1 and "no usable answer" in unreachable.error

    asked = len(github.requests)
    short = guard(github.base_url, "guard-token-not-secret", _sha(github)[:7])
    assert short.returncode == 1 and "not a full 40-character commit SHA" in short.error
    assert len(github.requests) == asked  # refused on its input, before asking GitHub

    tokenless = guard(github.base_url, "", _sha(github))
    assert tokenless.returncode == 1 and "no token" in tokenless.error


@pytest.mark.parametrize(
    ("states", "quarantined", "healthy"),
    [
        ([("failure", "rolled back by rollback-runbook: 5xx"), ("success", "CI")], True, False),
        ([("inactive", ""), ("failure", "rolled back by rollback-runbook: 5xx"), ("success", "")], True, False),
        (
            [
                ("inactive", "quarantine lifted by rollback-runbook: fixed"),
                ("failure", "rolled back by rollback-runbook: x"),
            ],
            False,
            False,
        ),
        ([("failure", "post-deploy checks failed"), ("success", "")], False, False),
        ([("success", ""), ("inactive", "quarantine lifted by rollback-runbook: fixed")], False, True),
        ([], False, False),
    ],
)
def test_one_rule_for_quarantined_and_the_released_is_no_last_known_good(
    states: list[tuple[str, str]], quarantined: bool, healthy: bool
) -> None:
    records = [quarantine.StatusRecord(state, description) for state, description in states]
    assert (quarantine.quarantining(records) is not None) is quarantined
    assert repo_api.was_healthy([state for state, _ in states]) is healthy
