"""Issue 8: exactly the version meant, exactly once, whatever happens on the wire or to the process.

Each case is played against the stateful GitHub stand-in (faults injected after GitHub acted), the real
registry and a real Prefect server; each counts the workflow runs GitHub really created.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_API_URL
from prefect.states import AwaitingRetry, Crashed

from flows.rollback import rollback
from runbook.config import CONFIG_ENV_VAR, using_config
from sandbox.registry import push_image
from sandbox.world import ENVIRONMENT, REPOSITORY, SERVICE, Sandbox
from tests.support.rollback import postmortem_of
from tests.support.rollback import run_rollback as run

pytestmark = pytest.mark.usefixtures("prefect_server")

ROOT = Path(__file__).resolve().parents[2]


def fast_config(sandbox: Sandbox, name: str = "fast.yaml", **deploy: Any) -> Path:
    """The sandbox's configuration with a 1 s GitHub client timeout and short look-ups."""
    data = sandbox.config_data()
    data["github"]["timeout_seconds"] = 1
    data["services"][SERVICE]["environments"][ENVIRONMENT]["deploy"].update(
        {"lookup_seconds": 1.5, "unreadable_status_seconds": 1, **deploy}
    )
    return sandbox.write_config(data, name)


def rollout_states(sandbox: Sandbox) -> list[str]:
    """The statuses (newest first) of the rollback's own GitHub deployment record."""
    newest = sandbox.github.deployments(REPOSITORY, ENVIRONMENT)[0]
    assert newest["task"] == "deploy:rollback"
    return [s["state"] for s in newest["statuses"]]


@pytest.mark.parametrize("fault", ["accept-then-502", "accept-then-reset", "accept-then-slow"])
def test_a_dispatch_whose_answer_was_lost_is_found_not_sent_again(sandbox: Sandbox, fault: str) -> None:
    sandbox.github.fail_dispatches = [fault]
    sandbox.github.slow_answer_seconds = 2.5  # past the 1 s client timeout

    state = run(sandbox, config=fast_config(sandbox))

    assert state.is_completed(), state.message
    good = sandbox.commits.last_known_good
    assert len(sandbox.github.dispatches()) == 1 and len(sandbox.github.workflow_runs(REPOSITORY)) == 1
    assert sandbox.app.deploys[-1] == good and sandbox.app.deploys.count(good) == 1
    assert "dispatched (answer lost, run found): run " in postmortem_of(state)


def test_no_run_created_is_dispatched_again_once_with_the_same_id(sandbox: Sandbox) -> None:
    sandbox.github.fail_dispatches = ["refuse-502"]  # a proxy's 502: GitHub never saw it

    state = run(sandbox, config=fast_config(sandbox))

    assert state.is_completed(), state.message
    first, second = sandbox.github.dispatches()
    assert first.body["inputs"]["rollback_id"] == second.body["inputs"]["rollback_id"]
    assert len(sandbox.github.workflow_runs(REPOSITORY)) == 1


def test_when_nothing_can_be_known_it_says_unknown_and_stops(sandbox: Sandbox) -> None:
    sandbox.github.fail_dispatches = ["refuse-502", "refuse-502", "refuse-502"]

    state = run(sandbox, config=fast_config(sandbox))

    assert state.is_failed()
    assert len(sandbox.github.dispatches()) == 2 and sandbox.github.workflow_runs(REPOSITORY) == []
    failure = sandbox.slack.messages[-1].text
    assert "unknown whether the rollback workflow started" in failure
    assert "/acme/shop/actions/workflows/rollback-production.yml" in failure  # where to check
    assert "nothing was deployed" not in failure and "rien n'a été déployé" not in failure
    # Not known to have done nothing: the record says `failure`, not `error` (which would mean "never went live").
    assert rollout_states(sandbox)[0] == "failure"


def test_a_refused_dispatch_says_not_dispatched(sandbox: Sandbox) -> None:
    data = sandbox.config_data()
    data["services"][SERVICE]["environments"][ENVIRONMENT]["deploy"]["sha_input"] = "commit"

    state = run(sandbox, config=sandbox.write_config(data, "wrong-input.yaml"))

    assert state.is_failed() and "not dispatched: GitHub refused" in str(state.message)
    assert sandbox.github.workflow_runs(REPOSITORY) == []
    assert rollout_states(sandbox) == ["error", "in_progress"]  # surely never went live


def test_an_unreadable_run_status_leaves_the_verdict_to_the_health_check(sandbox: Sandbox) -> None:
    sandbox.github.set_runs_unreadable(True)

    state = run(sandbox, config=fast_config(sandbox))

    assert state.is_completed(), state.message
    assert len(sandbox.github.dispatches()) == 1 and sandbox.app.version == sandbox.commits.last_known_good
    markdown = postmortem_of(state)
    assert "its status cannot be read" in markdown and "checking health" in markdown and "## Warnings" in markdown


@pytest.mark.parametrize("target", ["github-actions", "webhook"])
def test_the_verified_digest_is_deployed_even_if_the_tag_moves(sandbox: Sandbox, target: str) -> None:
    good = sandbox.commits.last_known_good
    moved: list[str] = []

    def move_the_tag(message: Any) -> None:
        if good in message.text and not moved:  # "rolling back to <good>": verified, not yet deployed
            moved.append(push_image(sandbox.registry.base_url, "acme/shop", good, payload=b"other bits"))

    sandbox.slack.on_message = move_the_tag
    config = None
    if target == "webhook":  # the app is its own deploy API
        webhook = {"type": "webhook", "url": f"{sandbox.app.url}/deploy", "timeout_seconds": 5}
        config = sandbox.write_config(sandbox.config_data(deploy=webhook), "webhook.yaml")
    state = run(sandbox, config=config)

    assert state.is_completed(), state.message
    verified = state.result().digest
    assert moved and moved[0] != verified
    if target == "webhook":
        [posted] = sandbox.app.deploy_requests
        assert (posted["digest"], posted["image"]) == (verified, f"{sandbox.image}@{verified}")
    else:
        assert sandbox.deployed_digests == [verified]
    assert verified[:19] in sandbox.slack.messages[-1].text  # announced: what was deployed


# --- a crash during the deploy ------------------------------------------------------------------------


def _start_and_kill_during_deploy(sandbox: Sandbox) -> str:
    """Run the rollback in its own process; SIGKILL it while its workflow run is in flight; its flow run id."""
    sandbox.github.run_step_seconds = 1.5  # the workflow run takes 3 s: time to die in the middle
    script = f"from flows.rollback import rollback\nrollback(service={SERVICE!r}, environment={ENVIRONMENT!r})\n"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), CONFIG_ENV_VAR: str(sandbox.config_path)}
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not sandbox.github.dispatches():
            assert child.poll() is None and time.monotonic() < deadline, "the rollback never dispatched"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    runs = sandbox.github.workflow_runs(REPOSITORY)
    assert len(runs) == 1 and runs[0]["status"] != "completed"  # killed mid-deploy
    flow_run_id = sandbox.github.dispatches()[0].body["inputs"]["rollback_id"]  # the rollback id is the run's id
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id).state_type == StateType.RUNNING  # as the dead process left it
        # What Prefect's zombie detection does to a run whose process stopped sending heartbeats.
        client.set_flow_run_state(flow_run_id, Crashed(message="process killed"), force=True)
    return str(flow_run_id)


def test_a_retry_after_a_crash_mid_deploy_follows_the_run_and_dispatches_nothing(sandbox: Sandbox) -> None:
    flow_run_id = _start_and_kill_during_deploy(sandbox)

    # The UI's Retry: the same flow run goes back to AwaitingRetry and is run again (at once: its own slot,
    # still leased by the dead process, does not lock it out).
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, AwaitingRetry(), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    started = time.monotonic()
    with using_config(sandbox.config_path):
        state = run_flow(rollback, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")

    assert state.is_completed(), state.message
    assert time.monotonic() - started < 30
    assert len(sandbox.github.dispatches()) == 1 and len(sandbox.github.workflow_runs(REPOSITORY)) == 1
    assert sandbox.app.version == sandbox.commits.last_known_good
    assert rollout_states(sandbox)[0] == "success"
    assert "found again: run " in postmortem_of(state)


def test_a_retry_of_a_completed_rollback_changes_and_posts_nothing(sandbox: Sandbox) -> None:
    first = run(sandbox)
    assert first.is_completed(), first.message
    flow_run_id = first.state_details.flow_run_id
    said = sandbox.slack.requests  # calls per Slack method
    statuses = [len(d["statuses"]) for d in sandbox.github.deployments(REPOSITORY, ENVIRONMENT)]

    # The UI's Retry of a run that already Completed.
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, AwaitingRetry(), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    with using_config(sandbox.config_path):
        state = run_flow(rollback, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")

    assert sandbox.slack.requests == said  # no "Rollback terminé" again, no root update
    assert [len(d["statuses"]) for d in sandbox.github.deployments(REPOSITORY, ENVIRONMENT)] == statuses
    assert state.is_completed() and state.message.startswith("nothing left to do: this rollback completed at ")
    assert len(sandbox.github.dispatches()) == 1 and sandbox.app.version == sandbox.commits.last_known_good


def test_a_new_run_after_a_crash_follows_what_is_in_flight(sandbox: Sandbox) -> None:
    _start_and_kill_during_deploy(sandbox)

    state = run(sandbox)

    assert state.is_completed(), state.message
    good = sandbox.commits.last_known_good
    summary = state.result()
    assert (summary.from_sha, summary.to_sha) == (sandbox.commits.broken, good)  # not one version further back
    assert len(sandbox.github.dispatches()) == 1 and sandbox.app.version == good
    # One GitHub record for the one rollout, closed by the run that finished it.
    rollouts = [d for d in sandbox.github.deployments(REPOSITORY, ENVIRONMENT) if d["task"] == "deploy:rollback"]
    assert len(rollouts) == 1 and rollouts[0]["statuses"][0]["state"] == "success"
    assert "resuming rollback" in postmortem_of(state)
