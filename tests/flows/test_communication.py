"""Issue 5, communication and record: the Slack thread, the GitHub deployment record, events, no secret leaks."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

from sandbox.world import ENVIRONMENT, REPOSITORY, Sandbox
from tests.support.prefect_events import read_events, wait_for_events
from tests.support.rollback import run_rollback as _run

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_the_root_message_tracks_the_status_and_the_thread_links_everything(sandbox: Sandbox) -> None:
    state = _run(sandbox, reason="5xx spike")
    assert state.is_completed(), state.message
    good = sandbox.commits.last_known_good
    root, started, ended = sandbox.slack.messages
    assert "investigation en cours" in root.text and "<!subteam^S0DEVTEAM> <@U0PRODUCTOWNER>" in root.text
    assert [u.splitlines()[-1] for u in root.updates] == [
        f"*Statut :* rollback vers `{good[:7]}` en cours",
        root.updates[-1].splitlines()[-1],
    ]
    assert root.updates[-1].splitlines()[-1].startswith(":white_check_mark: *Statut :* rétabli en ")
    run_url = f"http://127.0.0.1:4200/runs/flow-run/{state.state_details.flow_run_id}"
    assert run_url in root.text and run_url in ended.text
    assert f"/compare/{good[:12]}...{sandbox.commits.broken[:12]}" in started.text  # the changes rolled back
    assert "/actions/runs/" in ended.text and ended.reply_broadcast  # the deploy, to everyone


def test_a_failure_sets_the_root_status(sandbox: Sandbox) -> None:
    sandbox.workflow_fails = True
    assert _run(sandbox).is_failed()
    root = sandbox.slack.messages[0]
    assert root.updates[-1].splitlines()[-1] == ":x: *Statut :* échec à l'étape deploy"


def test_the_rollout_is_recorded_in_github_deployments(sandbox: Sandbox) -> None:
    state = _run(sandbox)
    assert state.is_completed(), state.message
    rollout = sandbox.github.deployments(REPOSITORY, ENVIRONMENT)[0]
    assert rollout["sha"] == sandbox.commits.last_known_good
    assert [s["state"] for s in rollout["statuses"]] == ["success", "in_progress"]
    run_url = f"http://127.0.0.1:4200/runs/flow-run/{state.state_details.flow_run_id}"
    assert {s["log_url"] for s in rollout["statuses"]} == {run_url}
    # The version rolled back from: GitHub made it inactive (a newer success), then the runbook marked it bad.
    previous = sandbox.github.deployments(REPOSITORY, ENVIRONMENT)[1]
    assert previous["sha"] == sandbox.commits.broken
    assert [s["state"] for s in previous["statuses"]] == ["failure", "inactive", "success"]


def test_english_and_an_incoming_webhook_without_a_bot_token(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_TEST_SLACK_WEBHOOK", sandbox.slack.webhook_url)
    data = sandbox.config_data()
    data["slack"] = {"webhook_url": {"env": "RUNBOOK_TEST_SLACK_WEBHOOK"}, "language": "en"}
    state = _run(sandbox, sandbox.write_config(data, "webhook.yaml"))
    assert state.is_completed(), state.message
    texts = [m.text for m in sandbox.slack.messages]
    assert len(texts) == 3 and all(m.thread_ts is None for m in sandbox.slack.messages)
    assert texts[0].startswith("<!subteam^S0DEVTEAM> <@U0PRODUCTOWNER> Production incident detected.")
    assert texts[1].startswith("Starting the rollback procedure to version")
    assert texts[2].startswith("Rollback finished. The system is operational again.")
    assert "no thread and no status updates" in state.result().postmortem


def test_events_for_automations(sandbox: Sandbox) -> None:
    since = datetime.now(UTC).isoformat()
    state = _run(sandbox)
    assert state.is_completed()
    sandbox.workflow_fails = True
    assert _run(sandbox, sha=sandbox.commits.all[0]).is_failed()
    names = wait_for_events(
        "runbook.rollback.",
        "runbook.service.shop.production",
        since,
        {"runbook.rollback.succeeded", "runbook.rollback.failed"},
    )
    assert names.count("runbook.rollback.started") >= 2
    assert {"runbook.rollback.succeeded", "runbook.rollback.failed"} <= set(names)
    event = next(e for e in read_events("runbook.rollback.failed", "runbook.service.shop.production"))
    assert event["resource"]["runbook.service"] == "shop" and event["resource"]["runbook.environment"] == "production"
    assert event["payload"]["step"] == "deploy"


def test_planted_secrets_never_leak(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secrets in the configuration appear in no log line, artifact, Slack message or result of a run."""
    registry_password = "registry-password-PLANTED-7f3a"
    monkeypatch.setenv("RUNBOOK_TEST_REGISTRY_PASSWORD", registry_password)
    data = sandbox.config_data()
    data["registries"][0].update({"username": "ci", "password": {"env": "RUNBOOK_TEST_REGISTRY_PASSWORD"}})
    config = sandbox.write_config(data, "secrets.yaml")
    secrets = [sandbox.github_token, sandbox.slack_token, registry_password]
    caplog.set_level(logging.DEBUG)

    states = [_run(sandbox, config)]
    sandbox.workflow_fails = True  # and a failed run, whose messages carry error details
    states.append(_run(sandbox, config, sha=sandbox.commits.all[0]))
    states.append(_run(sandbox, config, sha="deadbee"))  # a SHA refused on its input
    # Secrets pasted where the variable's name belongs: the configuration is refused without repeating them.
    data["github"]["token"] = f"env:{sandbox.github_token}"
    data["slack"]["token"] = {"env": sandbox.slack_token}
    data["registries"][0]["password"] = {"prefect_secret": registry_password}
    states.append(_run(sandbox, sandbox.write_config(data, "pasted.yaml")))
    sandbox.slack.set_down(True)
    states.append(_run(sandbox, config, sha=sandbox.commits.all[1]))

    assert [s.type.value for s in states] == ["COMPLETED", "FAILED", "FAILED", "FAILED", "FAILED"]
    assert "looks like a credential" in str(states[3].message)
    with get_client(sync_client=True) as client:
        texts = [r.getMessage() for r in caplog.records] + [str(s.message) for s in states]
        for s in states:
            run_id = s.state_details.flow_run_id
            texts += [
                log.message
                for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            ]
            texts += [
                str(a.data)
                for a in client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
                )
            ]
    texts += [m.text for m in sandbox.slack.messages] + [u for m in sandbox.slack.messages for u in m.updates]
    texts += [str(r.body) for r in sandbox.github.requests]
    assert len(texts) > 50  # the scan saw the run's words
    for secret in secrets:
        leaks = [t for t in texts if secret in t]
        assert leaks == [], f"secret found in: {leaks[:3]}"


def test_retries_are_in_the_postmortem(sandbox: Sandbox) -> None:
    sandbox.slack.rate_limit_next(1, retry_after=0)  # the first Slack call is rate limited once
    state = _run(sandbox)
    assert state.is_completed(), state.message
    markdown = state.result().postmortem
    retries = markdown.split("## Retries", 1)[1].split("##", 1)[0]
    assert "Slack: HTTP 429: retry 1 of the chat.postMessage call" in retries
    assert len(sandbox.slack.messages) == 3  # nothing lost to the 429
