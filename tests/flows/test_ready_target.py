"""Issue 11, the ready rollback target: prepared with the full path's checks, used only while it holds.

Real parts: the GitHub and Slack stand-ins, a real registry, the app, a real Prefect server (the Variable).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

from commands.ready_keeper import ReadyKeeper
from runbook import ready as ready_store
from runbook.config import load_config, using_config
from runbook.ready import ReadyTarget
from sandbox.world import ENVIRONMENT, REPOSITORY, SERVICE, Sandbox
from tests.support.rollback import postmortem_of, run_rollback

pytestmark = pytest.mark.usefixtures("prefect_server")


def _kept() -> ReadyTarget | None:
    with get_client(sync_client=True) as client:
        return ready_store.read(client, SERVICE, ENVIRONMENT)


@pytest.fixture(autouse=True)
def _no_ready_target() -> None:
    """Each test starts without one (the Prefect server is the session's)."""
    with get_client(sync_client=True) as client:
        ready_store.forget(client, SERVICE, ENVIRONMENT)


def _refresh(config: Path) -> str:
    said: list[str] = []
    with using_config(config):
        return ReadyKeeper(say=said.append).refresh(load_config(), SERVICE, ENVIRONMENT)


def _task_names(state: Any) -> set[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            task_run_filter=TaskRunFilter(),
        )
    return {run.name.rsplit("-", 1)[0] for run in runs}


def _full_path_choice(sandbox: Sandbox) -> tuple[str, str]:
    """What the full resolution chooses now (a dry run with no ready target used): the SHA and its digest."""
    data = sandbox.config_data()
    data["ready_target"] = {"enabled": False}
    state = run_rollback(sandbox, sandbox.write_config(data, "full.yaml"), dry_run=True)
    assert state.is_completed(), state.message
    summary = state.result()
    return summary.to_sha, summary.digest


def _deploy_new_version(sandbox: Sandbox, title: str) -> str:
    """CI ships a new version: the app runs it, GitHub records it deployed."""
    sha = sandbox.github.add_commit(REPOSITORY, title)
    sandbox.push(sha)
    sandbox.github.add_deployment(REPOSITORY, sha, ENVIRONMENT, state="success")
    sandbox.app.deploy(sha)
    return sha


def test_the_ready_path_deploys_what_the_full_path_would_have_chosen(sandbox: Sandbox) -> None:
    sha, digest = _full_path_choice(sandbox)
    assert _refresh(sandbox.config_path) == "prepared"
    ready = _kept()
    assert ready is not None
    assert (ready.running, ready.sha, ready.digest) == (sandbox.commits.broken, sha, digest)
    assert ready.preflight.startswith("workflow ") and ready.preflight.endswith(f"is active in {REPOSITORY}")

    state = run_rollback(sandbox, reason="5xx spike")

    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary.to_sha, summary.digest) == (sha, digest)
    assert sandbox.app.version == sha and len(sandbox.github.dispatches()) == 1
    tasks = _task_names(state)
    assert "check-ready-target" in tasks and not {"resolve-sha", "verify-image"} & tasks
    postmortem = postmortem_of(state)
    assert "path: ready target" in postmortem
    assert f"verified at {ready.prepared_at:%H:%M:%S}" in postmortem  # the digest's check, made when prepared


def test_a_rollback_prepares_the_next_ready_target(sandbox: Sandbox) -> None:
    state = run_rollback(sandbox)
    assert state.is_completed(), state.message
    assert "path: full resolution (no ready target" in postmortem_of(state)
    ready = _kept()
    assert ready is not None and ready.running == sandbox.commits.last_known_good  # prepared after the rollback
    assert (ready.sha, ready.digest) == _full_path_choice(sandbox)


def test_serve_prepares_again_after_a_deploy_and_keeps_it_otherwise(sandbox: Sandbox) -> None:
    assert _refresh(sandbox.config_path) == "prepared"
    first = _kept()
    assert _refresh(sandbox.config_path) == "kept"
    assert _kept() == first
    new = _deploy_new_version(sandbox, "Release that breaks again")
    assert _refresh(sandbox.config_path) == "prepared"
    ready = _kept()
    assert ready is not None and ready.running == new
    assert (ready.sha, ready.digest) == _full_path_choice(sandbox)


@pytest.mark.parametrize("stale", ["a deploy since", "too old", "another configuration"])
def test_a_ready_target_that_no_longer_holds_falls_back_to_the_full_path(sandbox: Sandbox, stale: str) -> None:
    assert _refresh(sandbox.config_path) == "prepared"
    ready = _kept()
    assert ready is not None
    expected = {
        "a deploy since": "runs now, not",
        "too old": "s old (more than 900 s)",
        "another configuration": "prepared under another configuration",
    }[stale]
    if stale == "a deploy since":  # the version deployed before it was fine after all: it is the way back now
        sandbox.app.broken.add(_deploy_new_version(sandbox, "Another release that breaks"))
        sandbox.app.broken.discard(sandbox.commits.broken)
    elif stale == "too old":
        ready_store.write(replace(ready, prepared_at=ready.prepared_at - timedelta(hours=1)))
    else:
        ready_store.write(replace(ready, basis="0" * 32))
    way_back = _full_path_choice(sandbox)[0] if stale == "a deploy since" else sandbox.commits.last_known_good

    state = run_rollback(sandbox)

    assert state.is_completed(), state.message
    postmortem = postmortem_of(state)
    assert "path: full resolution (" in postmortem and expected in postmortem
    assert {"check-ready-target", "resolve-sha", "verify-image"} <= _task_names(state)
    assert sandbox.app.version == way_back


def test_no_ready_target_is_kept_when_the_full_path_would_fail(sandbox: Sandbox) -> None:
    data = sandbox.config_data()
    data["services"][SERVICE]["image"] = f"{sandbox.registry.host}/acme/never-pushed"
    config = sandbox.write_config(data, "no-images.yaml")

    outcome = _refresh(config)

    assert outcome.startswith("none: ") and _kept() is None
    state = run_rollback(sandbox, config)
    assert state.is_failed()
    assert outcome.removeprefix("none: ").split(":")[0] in str(state.message)  # the same check, the same refusal


def test_a_retry_of_a_run_that_took_the_ready_path_deploys_nothing_more(sandbox: Sandbox) -> None:
    """Attempt 1 deploys the ready target's version and fails its health check; the Retry keeps that choice.

    Read again, the version attempt 1 deployed runs now: a ready target prepared for it (or a fresh resolution)
    would lead one version further back. The Retry must not dispatch again.
    """
    good = sandbox.commits.last_known_good
    health = {"probes": [{"url": f"{sandbox.app.url}/health"}], "deadline_seconds": 1, "interval_seconds": 0.1}
    config = sandbox.write_config(sandbox.config_data(health=health), "short-deadline.yaml")
    assert _refresh(config) == "prepared"
    sandbox.app.broken.add(good)

    # A person fixes the service once told of the failed health check; meanwhile serve prepares a ready target
    # for the version that runs now (what attempt 1 deployed), which a Retry must not follow.
    def fixed_and_refreshed(message: Any) -> None:
        if "health-check" in message.text and good in sandbox.app.broken:
            sandbox.app.broken.discard(good)
            assert _refresh(config) == "prepared"

    sandbox.slack.on_message = fixed_and_refreshed
    with using_config(config):
        from flows.rollback import rollback

        state = rollback.with_options(retries=1, retry_delay_seconds=0)(
            service=SERVICE, environment=ENVIRONMENT, return_state=True
        )

    assert state.is_completed(), state.message
    assert len(sandbox.github.dispatches()) == 1 and sandbox.app.version == good
    assert state.result().to_sha == good
