"""Issue 11: Slack beside the critical path. Real Prefect test server, sandbox, the Slack stand-in and slack-sdk.

The rollback asks for its messages and goes on; one lane per run delivers them in order, retries what Slack did
not take for a passing reason until the delivery deadline, and the post-mortem names what never got through.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow

from flows.rollback import rollback
from runbook import hold
from runbook.config import using_config
from runbook.incident import AlertContext
from sandbox.slack_standin import SlackMessage
from sandbox.world import ENVIRONMENT, SERVICE, SLACK_TOKEN_VAR, Sandbox
from tests.support.rollback import postmortem_of, run_rollback
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("prefect_server")

HELD_FR = "une personne décide"


def warnings_of(markdown: str) -> str:
    """The post-mortem's Warnings section."""
    return markdown.split("## Warnings", 1)[1].split("\n## ", 1)[0]


def back_after_the_deploy(sandbox: Sandbox) -> threading.Thread:
    """Slack down now, back once the app has been asked to deploy (a thread; join it after the run)."""

    def back() -> None:
        try:
            wait_for(lambda: len(sandbox.app.deploys) > 1, timeout=120, what="the rollback's deploy")
        finally:
            sandbox.slack.set_down(False)

    sandbox.slack.set_down(True)
    thread = threading.Thread(target=back, name="slack-back", daemon=True)
    thread.start()
    return thread


def assert_the_seed_thread(sandbox: Sandbox, good: str) -> list[SlackMessage]:
    """Root, "rollback started", "recovered" (broadcast), the replies in the root's thread, the root's status kept."""
    root, started, ended = sandbox.slack.messages[:3]
    assert root.thread_ts is None and "investigation en cours" in root.text
    assert started.thread_ts == root.ts and f"/compare/{good[:12]}...{sandbox.commits.broken[:12]}" in started.text
    assert ended.thread_ts == root.ts and ended.reply_broadcast and "/actions/runs/" in ended.text
    statuses = [u.splitlines()[-1] for u in root.updates]
    assert statuses[0] == f"*Statut :* rollback vers `{good[:7]}` en cours"
    assert statuses[1].startswith(":white_check_mark: *Statut :* rétabli en ") and len(statuses) == 2
    return [root, started, ended]


def test_a_hanging_slack_changes_nothing_but_the_postmortem(sandbox: Sandbox) -> None:
    data = sandbox.config_data()
    data["slack"].update({"timeout_seconds": 1, "delivery_seconds": 2})  # each call gives up before Slack answers
    sandbox.slack.set_hang(3)

    state = run_rollback(sandbox, sandbox.write_config(data, "hanging-slack.yaml"))

    assert state.is_completed(), state.message
    summary = state.result()
    good = sandbox.commits.last_known_good
    assert summary.outcome == "recovered" and summary.to_sha == good and summary.time_to_recovery is not None
    assert sandbox.app.deploys[-1] == good and sandbox.app.version == good  # the deploy happened
    assert sandbox.slack.messages == [] and sandbox.slack.requests["chat.postMessage"] >= 1
    for markdown in (summary.postmortem, postmortem_of(state)):
        warnings = warnings_of(markdown)
        for message in ("the incident message", "the rollback start", "the end message"):
            assert f"Slack: {message} not delivered" in warnings, warnings


def test_slack_back_after_an_outage_gets_the_whole_thread_in_order(sandbox: Sandbox) -> None:
    back = back_after_the_deploy(sandbox)

    state = run_rollback(sandbox, reason="5xx spike")
    back.join(timeout=5)

    assert state.is_completed(), state.message
    assert len(sandbox.slack.messages) == 3
    assert_the_seed_thread(sandbox, sandbox.commits.last_known_good)
    assert sandbox.slack.requests["chat.postMessage"] > 3  # the root was tried again until Slack was back
    markdown = state.result().postmortem
    assert "not delivered" not in markdown
    assert "Slack refused the message: HTTP 503: retry 1 of the message" in markdown  # in the Retries section


def test_a_slow_slack_keeps_the_order_and_loses_nothing(sandbox: Sandbox) -> None:
    sandbox.slack.latency_seconds = 0.3  # the lane lags behind the run: the run's end waits for it

    state = run_rollback(sandbox)

    assert state.is_completed(), state.message
    assert len(sandbox.slack.messages) == 3
    assert_the_seed_thread(sandbox, sandbox.commits.last_known_good)
    assert "not delivered" not in state.result().postmortem


def test_a_refused_token_is_not_tried_again(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SLACK_TOKEN_VAR, "xoxb-wrong-token-value")

    state = run_rollback(sandbox)

    assert state.is_completed(), state.message
    assert sandbox.app.version == sandbox.commits.last_known_good
    # The root, the start and the end: one attempt each; no status update without a root.
    assert sandbox.slack.requests == {"chat.postMessage": 3}
    assert sandbox.slack.messages == []
    warnings = warnings_of(state.result().postmortem)
    assert warnings.count("Slack refused the message: invalid_auth") == 3, warnings
    assert "xoxb-wrong-token-value" not in state.result().postmortem


@pytest.fixture
def no_last_rollback() -> Iterator[None]:
    """No automatic rollback recorded for the sandbox's service, before and after (other tests run it by hand)."""

    def forget() -> None:
        with get_client(sync_client=True) as client:
            if client.read_variable_by_name(hold.variable_name(SERVICE, ENVIRONMENT)) is not None:
                client.delete_variable_by_name(hold.variable_name(SERVICE, ENVIRONMENT))

    forget()
    yield
    forget()


def run_for_alert(sandbox: Sandbox, group: str, starts_at: datetime) -> Any:
    """A rollback started by an alert of `group`, as the alert endpoint creates it, run in this process."""
    alert = AlertContext(
        name="HighErrorRate",
        labels={"service": SERVICE, "environment": ENVIRONMENT},
        starts_at=starts_at,
        group_key=group,
        fingerprints=(f"{group}-fingerprint",),
    )
    with using_config(sandbox.config_path):
        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run(
                rollback,
                parameters={"service": SERVICE, "environment": ENVIRONMENT, "reason": "alert"},
                context=alert.to_run_context(),
            )
        return run_flow(rollback, flow_run=flow_run, return_type="state")


@pytest.mark.usefixtures("no_last_rollback")
def test_a_root_posted_late_is_still_where_held_alerts_reply(sandbox: Sandbox) -> None:
    started = datetime.now(UTC) - timedelta(minutes=1)
    back = back_after_the_deploy(sandbox)  # the hold's record is written before Slack has taken the root

    automatic = run_for_alert(sandbox, '{}:{alertname="HighErrorRate"}', started)
    back.join(timeout=5)

    assert automatic.is_completed(), automatic.message
    root, _, _ = assert_the_seed_thread(sandbox, sandbox.commits.last_known_good)
    with get_client(sync_client=True) as client:
        last = hold.read_last(client, SERVICE, ENVIRONMENT)
    assert last is not None and (last.channel, last.thread_ts) == (root.channel_id, root.ts)
    assert "Slack thread written down (its root was posted after the record)" in automatic.result().postmortem

    held = run_for_alert(sandbox, '{}:{alertname="HighLatency"}', started)

    assert held.is_cancelled() and held.name == "Held", held
    [reply] = [m for m in sandbox.slack.messages if HELD_FR in m.text]
    assert reply.thread_ts == root.ts
