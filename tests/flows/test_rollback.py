"""The `rollback` flow end to end, under a real Prefect test server, against the sandbox's real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.rollback import rollback
from runbook.config import using_config
from sandbox.registry import delete_tag
from sandbox.world import ENVIRONMENT, REPOSITORY, SERVICE, Sandbox
from tests.support.rollback import postmortem_of
from tests.support.rollback import run_rollback as run

SEED_1 = "Incident en production détecté. Investigation en cours."
SEED_2 = "Déclenchement de la procédure de rollback vers la version `{sha}`."
SEED_3 = "Rollback terminé. Le système est de nouveau opérationnel. Une analyse post-mortem sera effectuée."

pytestmark = pytest.mark.usefixtures("prefect_server")


def health(sandbox: Sandbox) -> int:
    return httpx.get(f"{sandbox.app.url}/health", timeout=5).status_code


def one_thread(sandbox: Sandbox) -> list[Any]:
    """Every message is the root or a reply to it; returns them in order."""
    roots = [m for m in sandbox.slack.messages if m.thread_ts is None]
    assert len(roots) == 1, [m.text for m in sandbox.slack.messages]
    assert all(m.thread_ts in (None, roots[0].ts) for m in sandbox.slack.messages)
    return sandbox.slack.messages


def test_rolls_back_to_last_known_good(sandbox: Sandbox) -> None:
    good, broken = sandbox.commits.last_known_good, sandbox.commits.broken
    assert health(sandbox) == 500

    state = run(sandbox, reason="5xx spike", incident="INC-1")

    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary.outcome, summary.from_sha, summary.to_sha) == ("recovered", broken, good)
    assert summary.digest.startswith("sha256:") and summary.time_to_recovery > 0
    assert sandbox.app.version == good and health(sandbox) == 200
    dispatches = sandbox.github.dispatches()
    # The verified digest is what the workflow deploys; the rollback id names its run (found again if need be).
    rollback_id = str(state.state_details.flow_run_id)
    assert len(dispatches) == 1
    assert dispatches[0].body["inputs"] == {"sha": good, "digest": summary.digest, "rollback_id": rollback_id}
    assert sandbox.deployed_digests == [summary.digest]
    assert sandbox.github.workflow_runs(REPOSITORY)[0]["display_title"] == f"rollback-production {good} {rollback_id}"
    root, started, ended = one_thread(sandbox)
    assert SEED_1 in root.text and "<!subteam^S0DEVTEAM>" in root.text and "5xx spike" in root.text
    assert SEED_2.format(sha=good) in started.text and not started.reply_broadcast
    assert SEED_3 in ended.text and ended.reply_broadcast
    # The healthy rollout is recorded: it is the running version now, tomorrow's last known good.
    recorded = sandbox.github.deployments(REPOSITORY, ENVIRONMENT)[0]
    assert recorded["sha"] == good and recorded["statuses"][0]["state"] == "success"
    markdown = postmortem_of(state)
    assert f"`{broken}`" in markdown and f"`{good}`" in markdown and summary.digest in markdown
    assert "Time to recovery:** " in markdown and "last known good" in markdown


def test_explicit_short_sha(sandbox: Sandbox) -> None:
    first = sandbox.commits.all[0]
    state = run(sandbox, sha=first[:7].upper())
    assert state.is_completed(), state.message
    assert state.result().to_sha == first and sandbox.app.version == first
    assert SEED_2.format(sha=first) in one_thread(sandbox)[1].text


def test_missing_image_stops_before_any_change(sandbox: Sandbox) -> None:
    wanted = sandbox.commits.all[1]
    delete_tag(sandbox.registry.base_url, "acme/shop", wanted)

    state = run(sandbox, sha=wanted)

    assert state.is_failed()
    assert sandbox.github.dispatches() == [] and sandbox.app.version == sandbox.commits.broken
    _root, failure = one_thread(sandbox)
    assert "verify-image" in failure.text and wanted in failure.text and failure.reply_broadcast
    markdown = postmortem_of(state)
    assert "FAILED at step `verify-image`" in markdown and wanted in markdown


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("not-a-sha!", "is not a commit SHA"),
        ("deadbee", "does not exist"),
        ("on-branch-feature", "is not on branch main"),
        ("running", "already the version running"),
    ],
)
def test_unusable_sha_changes_and_posts_nothing(sandbox: Sandbox, given: str, expected: str) -> None:
    config = None
    if given == "on-branch-feature":
        given = sandbox.github.add_commit(REPOSITORY, "Experiment", branch="feature")
        sandbox.push(given)
    elif given == "running":
        given = sandbox.commits.broken
        # Refused only when the service itself says so: GitHub Deployments alone are records, not proof.
        probe = {"url": f"{sandbox.app.url}/version"}
        config = sandbox.write_config(sandbox.config_data(version_probe=probe), "probe.yaml")

    state = run(sandbox, config=config, sha=given)

    assert state.is_failed() and expected in str(state.message)
    assert sandbox.github.dispatches() == [] and sandbox.app.version == sandbox.commits.broken
    # Refused on its input: checked before any post, so the team is not called for a typo.
    assert sandbox.slack.messages == []
    markdown = postmortem_of(state)
    assert "FAILED at step `resolve-sha`" in markdown and expected in markdown
    if given == "not-a-sha!":  # the format needs no I/O: checked before GitHub (and the slot, and Slack)
        assert sandbox.github.requests == []


def test_health_never_passes_escalates(sandbox: Sandbox) -> None:
    sandbox.app.broken.add(sandbox.commits.last_known_good)
    config = _short_health_deadline(sandbox)

    state = run(sandbox, config=config)

    assert state.is_failed()
    assert len(sandbox.github.dispatches()) == 1
    failure = one_thread(sandbox)[-1]
    assert "health-check" in failure.text and "escalader" in failure.text and failure.reply_broadcast
    assert "FAILED at step `health-check`" in postmortem_of(state)
    # Not recorded healthy: the failed version must never become a "last known good".
    attempt = sandbox.github.deployments(REPOSITORY, ENVIRONMENT)[0]
    assert attempt["sha"] == sandbox.commits.last_known_good
    assert [s["state"] for s in attempt["statuses"]] == ["failure", "in_progress"]


def test_slack_down_does_not_block_the_rollback(sandbox: Sandbox) -> None:
    sandbox.slack.set_down(True)

    state = run(sandbox)

    assert state.is_completed(), state.message
    assert health(sandbox) == 200 and sandbox.slack.messages == []
    markdown = postmortem_of(state)
    assert "## Warnings" in markdown and "Slack" in markdown


def test_dry_run_changes_nothing(sandbox: Sandbox) -> None:
    state = run(sandbox, dry_run=True)

    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.outcome == "dry-run" and summary.to_sha == sandbox.commits.last_known_good
    assert sandbox.github.mutating_requests() == []
    assert sandbox.slack.messages == []
    assert sandbox.app.version == sandbox.commits.broken and sandbox.app.deploys == [sandbox.commits.broken]


def test_retried_run_deploys_once_and_keeps_one_thread(sandbox: Sandbox) -> None:
    """A failed run retried (same flow run, as the UI's Retry does) reuses the SHA, thread and deploy."""
    good = sandbox.commits.last_known_good
    sandbox.app.broken.add(good)
    config = _short_health_deadline(sandbox)
    # A person answers the escalation by fixing the service: the next attempt finds it healthy.
    sandbox.slack.on_message = lambda message: "health-check" in message.text and sandbox.app.broken.discard(good)

    with using_config(config):
        state = rollback.with_options(retries=1, retry_delay_seconds=0)(
            service=SERVICE, environment=ENVIRONMENT, return_state=True
        )

    assert state.is_completed(), state.message
    assert len(sandbox.github.dispatches()) == 1
    texts = [m.text for m in one_thread(sandbox)]
    assert sum(SEED_1 in t for t in texts) == 1 and sum(SEED_2.format(sha=good) in t for t in texts) == 1
    assert "health-check" in texts[-2] and SEED_3 in texts[-1]


def test_failed_workflow_run_fails_the_deploy_with_its_link(sandbox: Sandbox) -> None:
    sandbox.workflow_fails = True

    state = run(sandbox)

    assert state.is_failed()
    assert len(sandbox.github.dispatches()) == 1 and sandbox.app.version == sandbox.commits.broken
    failure = one_thread(sandbox)[-1]
    assert "*deploy*" in failure.text and "ended with 'failure'" in failure.text
    assert "/actions/runs/" in failure.text  # the workflow run to open
    assert "FAILED at step `deploy`" in postmortem_of(state)


@pytest.mark.parametrize("given_sha", [False, True])
def test_github_unreachable_fails_before_any_change(sandbox: Sandbox, given_sha: bool) -> None:
    sandbox.github.set_down(True)

    state = run(sandbox, sha=sandbox.commits.all[0] if given_sha else None)

    assert state.is_failed()
    assert "GitHub" in str(state.message) and "HTTP 503" in str(state.message)
    assert sandbox.app.version == sandbox.commits.broken
    assert [r for r in sandbox.github.mutating_requests() if r.status < 500] == []
    # Not a refusal of the SHA: the team is told (the incident, then the failure), even for a given SHA.
    root, failure = one_thread(sandbox)
    assert "Incident en production détecté" in root.text and "resolve-sha" in failure.text


def test_unknown_service_is_refused_before_anything(sandbox: Sandbox) -> None:
    with using_config(sandbox.config_path):
        state = rollback(service="cart", environment=ENVIRONMENT, return_state=True)

    assert state.is_failed() and "unknown service 'cart'" in str(state.message)
    assert sandbox.github.requests == [] and sandbox.slack.messages == []


def test_a_version_rolled_back_from_is_never_a_last_known_good_again(sandbox: Sandbox) -> None:
    broken, good = sandbox.commits.broken, sandbox.commits.last_known_good
    assert run(sandbox).result().to_sha == good
    # CI marked the broken version healthy when it went out; the rollback marked it bad.
    states = [d["state"] for d in sandbox.github.deployments(REPOSITORY, ENVIRONMENT) if d["sha"] == broken]
    assert states[0] == "failure"

    # A fix goes out and breaks too; CI records it healthy, as CI does.
    fix = sandbox.github.add_commit(REPOSITORY, "Fix payment provider")
    sandbox.push(fix)
    sandbox.github.add_deployment(REPOSITORY, fix, ENVIRONMENT, state="success", description="CI deploy")
    sandbox.app.broken.add(fix)
    sandbox.app.deploy(fix)

    state = run(sandbox, reason="second incident")
    assert state.is_completed(), state.message
    assert state.result().to_sha == good  # not the first broken version, although it is newer


def _short_health_deadline(sandbox: Sandbox) -> Path:
    """The sandbox's configuration with a health check that gives up after 1 s."""
    health = {"probes": [{"url": f"{sandbox.app.url}/health"}], "deadline_seconds": 1, "interval_seconds": 0.1}
    return sandbox.write_config(sandbox.config_data(health=health), "short-deadline.yaml")
