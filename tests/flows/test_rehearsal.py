"""Rehearsals: preflight changes nothing and says ready or why not; a drill rolls back and forward in staging."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flows.rehearsal import rehearsal
from runbook.config import CONFIG_ENV_VAR, using_config
from sandbox.registry import delete_tag
from sandbox.world import ENVIRONMENT, SERVICE, Sandbox
from tests.support.prefect_events import wait_for_events

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def sandbox(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    sandbox.app.broken.clear()  # rehearsals run on a healthy service
    monkeypatch.setenv(CONFIG_ENV_VAR, str(sandbox.config_path))  # what the flows of this process read
    return sandbox


def test_preflight_is_ready_and_changes_nothing(sandbox: Sandbox) -> None:
    since = datetime.now(UTC).isoformat()
    report = rehearsal(service=SERVICE, environment=ENVIRONMENT)
    assert report.ready, report.summary()
    assert [name for name, _, _ in report.checks] == [
        "last known good",
        "image",
        "deploy target",
        "health probes",
        "slack",
    ]
    details = {name: detail for name, _, detail in report.checks}
    assert details["last known good"].startswith(sandbox.commits.last_known_good[:7] + " ")  # a sentence
    assert "(last known good; running " + sandbox.commits.broken[:7] in details["last known good"]
    assert "Resolution(" not in report.markdown() and "ImageCheck(" not in report.markdown()
    assert sandbox.github.mutating_requests() == []
    assert sandbox.slack.messages == [] and sandbox.slack.requests.get("auth.test") == 1
    assert sandbox.app.deploys == [sandbox.commits.broken]
    ready = {"runbook.rehearsal.ready"}
    assert ready <= set(wait_for_events("runbook.rehearsal.", "runbook.service.shop.production", since, ready))


def test_preflight_not_ready_says_why_and_tells_slack(sandbox: Sandbox) -> None:
    delete_tag(sandbox.registry.base_url, "acme/shop", sandbox.commits.last_known_good)
    sandbox.app.broken.add(sandbox.commits.broken)

    report = rehearsal(service=SERVICE, environment=ENVIRONMENT)

    assert not report.ready
    failed = {name: detail for name, ok, detail in report.checks if not ok}
    assert set(failed) == {"health probes"}  # the last known good is then the older commit, with its image
    assert "HTTP 500" in failed["health probes"]
    [message] = sandbox.slack.messages
    assert "PAS PRÊT" in message.text and "health probes" in message.text  # the configured language: fr
    assert sandbox.github.mutating_requests() == []


def test_drill_refuses_an_environment_not_marked_staging(sandbox: Sandbox) -> None:
    report = rehearsal(service=SERVICE, environment=ENVIRONMENT, mode="drill", notify="never")
    assert not report.ready and report.checks[0][0] == "staging"
    assert sandbox.github.dispatches() == []


def test_drill_rolls_back_and_forward_in_staging(sandbox: Sandbox) -> None:
    config = sandbox.write_config(sandbox.config_data(staging=True), "staging.yaml")

    with using_config(config):
        report = rehearsal(service=SERVICE, environment=ENVIRONMENT, mode="drill")

    assert report.ready, report.summary()
    assert set(report.timings) == {"roll back (to healthy)", "roll forward (to healthy)"}
    assert [d.body["inputs"]["sha"] for d in sandbox.github.dispatches()] == [
        sandbox.commits.last_known_good,
        sandbox.commits.broken,
    ]
    assert sandbox.app.version == sandbox.commits.broken
    assert sandbox.slack.messages == []  # drills report in the artifact; Slack only on a problem
