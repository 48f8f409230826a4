"""Which version runs: the rollback reads it from the most trusted source and rolls back from the right one."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from sandbox.world import ENVIRONMENT, REPOSITORY, Sandbox
from tests.support.rollback import run_rollback as run

pytestmark = pytest.mark.usefixtures("prefect_server")


def postmortem_of(state: Any) -> str:
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                key=ArtifactFilterKey(any_=["rollback-shop-production"]),
            )
        )
    return str(artifact.data)


def statuses(sandbox: Sandbox, sha: str) -> list[list[str]]:
    """The states of every deployment of `sha` in the environment (newest first, each newest first)."""
    found = sandbox.github.deployments(REPOSITORY, ENVIRONMENT)
    return [[s["state"] for s in d["statuses"]] for d in found if d["sha"] == sha]


def release_runs_broken(sandbox: Sandbox, *, states: tuple[str, ...] | None) -> str:
    """A new release goes out and crashes; the release before it (the story's "broken" one) is fine here.

    `states`: the statuses CI recorded on the release's deployment; None: it was deployed by hand, unrecorded.
    """
    release = sandbox.github.add_commit(REPOSITORY, "Refactor checkout")
    sandbox.push(release)
    if states is not None:
        sandbox.github.add_deployment(REPOSITORY, release, ENVIRONMENT, states=states, description="CI deploy")
    sandbox.app.broken.discard(sandbox.commits.broken)
    sandbox.app.broken.add(release)
    sandbox.app.deploy(release)
    return release


@pytest.mark.parametrize("given", [False, True], ids=["last-known-good", "given-sha"])
def test_a_live_release_that_ci_recorded_failure_is_the_one_rolled_back_from(sandbox: Sandbox, given: bool) -> None:
    previous = sandbox.commits.broken
    # CI deployed it, then its post-deploy check failed: `failure`, yet it is live.
    release = release_runs_broken(sandbox, states=("in_progress", "failure"))

    state = run(sandbox, sha=previous[:7] if given else None)

    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary.from_sha, summary.to_sha) == (release, previous) and sandbox.app.version == previous
    # The release is marked rolled back on its own deployment; the healthy version gets no `failure`.
    assert statuses(sandbox, release) == [["failure", "failure", "in_progress"]]
    assert all("failure" not in states for states in statuses(sandbox, previous))
    markdown = postmortem_of(state)
    assert f"| from (running before) | `{release}`<br>read from: GitHub Deployments |" in markdown
    assert f"/compare/{previous[:12]}...{release[:12]}" in markdown


def test_a_version_probe_says_what_runs_when_github_does_not_know(sandbox: Sandbox) -> None:
    previous = sandbox.commits.broken
    release = release_runs_broken(sandbox, states=None)  # GitHub Deployments still say `previous` runs
    probe = {"url": f"{sandbox.app.url}/version", "json_field": "build.sha"}  # a short SHA: expanded
    config = sandbox.write_config(sandbox.config_data(version_probe=probe), "probe.yaml")

    state = run(sandbox, config=config)

    assert state.is_completed(), state.message
    assert (state.result().from_sha, state.result().to_sha) == (release, previous)
    assert all("failure" not in states for states in statuses(sandbox, previous))
    assert f"| from (running before) | `{release}`<br>read from: version probe |" in postmortem_of(state)


@pytest.mark.parametrize("version_url", [False, True], ids=["github-deployments", "version-endpoint"])
def test_a_webhook_environment_rolls_back_to_the_last_known_good(sandbox: Sandbox, version_url: bool) -> None:
    good, broken = sandbox.commits.last_known_good, sandbox.commits.broken
    deploy = {"type": "webhook", "url": f"{sandbox.app.url}/deploy", "timeout_seconds": 5}
    if version_url:
        deploy["version_url"] = f"{sandbox.app.url}/version"
    config = sandbox.write_config(sandbox.config_data(deploy=deploy), "webhook.yaml")

    state = run(sandbox, config=config)

    assert state.is_completed(), state.message
    assert (state.result().from_sha, state.result().to_sha) == (broken, good) and sandbox.app.version == good
    assert sandbox.github.dispatches() == []
    source = "webhook version endpoint" if version_url else "GitHub Deployments"
    assert f"| from (running before) | `{broken}`<br>read from: {source} |" in postmortem_of(state)
