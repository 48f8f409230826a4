"""Issue 8: one incident, at most one automatic rollback (real Prefect test server, sandbox, alert endpoint).

Alerts go through the real endpoint and `PrefectLauncher`; each run it creates is executed in this process
(`run_flow`, as a runner would), so a scenario costs a few flow runs and no `runbook serve` process.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.flow_engine import run_flow

from commands.alert_endpoint import create_app
from flows.rollback import rollback
from runbook.alerts.launcher import PrefectLauncher
from runbook.alerts.model import label_fingerprint
from runbook.config import CONFIG_ENV_VAR, load_config
from runbook.hold import variable_name
from sandbox.alertmanager import AlertmanagerServer
from sandbox.registry import delete_tag
from sandbox.world import ENVIRONMENT, SERVICE, Sandbox
from tests.support.alert_app import TOKEN, Served, post
from tests.support.rollback import run_rollback
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("prefect_server")

HELD_FR = "une personne décide"


@dataclass
class Alerting:
    """The sandbox behind the alert endpoint; `send` posts a webhook, `run_started` runs what it created."""

    sandbox: Sandbox
    app: FastAPI
    deployment_id: uuid.UUID
    executed: set[str] = field(default_factory=set)

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        response = post(self.app, "/alerts/alertmanager", body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def run_started(self, answers: list[dict[str, Any]]) -> list[State]:
        """Run, in this process, every run these answers say was started and that has not run yet."""
        started = [a["run_id"] for answer in answers for a in answer["alerts"] if a["decision"] == "started"]
        states = []
        for run_id in dict.fromkeys(started):
            if run_id in self.executed:
                continue
            self.executed.add(run_id)
            with get_client(sync_client=True) as client:
                flow_run = client.read_flow_run(uuid.UUID(run_id))
            states.append(run_flow(rollback, flow_run=flow_run, return_type="state"))
        return states

    def send_and_run(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[State]]:
        answer = self.send(body)
        return answer, self.run_started([answer])

    def root(self) -> Any:
        [first] = [m for m in self.sandbox.slack.messages if m.thread_ts is None][:1]
        return first


@pytest.fixture(scope="module")
def deployment_id(prefect_server: None) -> Iterator[uuid.UUID]:
    deployment = rollback.to_deployment(name="hold-test")
    ident: uuid.UUID = deployment.apply()  # type: ignore[union-attr]
    yield ident
    # Other tests roll the same service back by hand: no "a rollback just happened" for them. (Deleted here and
    # before each test, not right after a run: on SQLite a delete racing the server's writes waits seconds.)
    _forget_last_rollback()


def _forget_last_rollback() -> None:
    with get_client(sync_client=True) as client:
        if client.read_variable_by_name(variable_name(SERVICE, ENVIRONMENT)) is not None:
            client.delete_variable_by_name(variable_name(SERVICE, ENVIRONMENT))


@pytest.fixture
def alerting(sandbox: Sandbox, deployment_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch) -> Alerting:
    data = sandbox.config_data()
    data["alerts"] = {"token": {"env": "RUNBOOK_TEST_ALERT_TOKEN"}}
    path = sandbox.write_config(data, "alerting.yaml")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))  # what the runs executed here read, as under `runbook serve`
    launcher = PrefectLauncher("rollback/hold-test")
    _forget_last_rollback()
    return Alerting(sandbox, create_app(load_config(path), launcher, token=TOKEN), deployment_id)


def alert(
    name: str, started: datetime, instance: str = "10.1.4.1:8080", ended: datetime | None = None
) -> dict[str, Any]:
    labels = {
        "alertname": name,
        "service": SERVICE,
        "environment": ENVIRONMENT,
        "rollback": "auto",
        "instance": instance,
    }
    return {
        "status": "resolved" if ended else "firing",
        "labels": labels,
        "annotations": {"summary": f"{name} on {SERVICE}"},
        "startsAt": started.isoformat(),
        "endsAt": ended.isoformat() if ended else "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=errors",
        "fingerprint": label_fingerprint(labels),
    }


def webhook(group: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    """An Alertmanager (v4) webhook body for one alert group."""
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "receiver": "rollback",
        "status": "firing" if firing else "resolved",
        "alerts": list(alerts),
        "groupLabels": {"alertname": group},
        "commonLabels": {"service": SERVICE},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{group}"}}',
        "truncatedAlerts": 0,
    }


def test_one_incident_rolls_back_once_then_a_person_decides(alerting: Alerting) -> None:
    sandbox = alerting.sandbox
    good = sandbox.commits.last_known_good
    t0 = datetime.now(UTC) - timedelta(minutes=3)
    older, newer = alert("HighErrorRate", t0), alert("HighErrorRate", t0 + timedelta(minutes=1), "10.1.4.2:8080")
    _, [automatic] = alerting.send_and_run(webhook("HighErrorRate", older, newer))
    assert automatic.is_completed(), automatic.message
    root = alerting.root()

    # A cascade: another alertname, started a minute later, while the incident goes on. Held: no deploy.
    answer, [cascade] = alerting.send_and_run(webhook("HighLatency", alert("HighLatency", t0 + timedelta(minutes=1))))

    assert answer["alerts"][0]["decision"] == "started"  # the endpoint had not told this group yet: the flow does
    assert cascade.is_cancelled() and cascade.name == "Held", cascade
    assert "before the automatic rollback of shop/production" in str(cascade.message)
    assert len(sandbox.github.dispatches()) == 1 and sandbox.app.version == good
    [reply] = [m for m in sandbox.slack.thread(root.ts) if HELD_FR in m.text]
    assert f"rollback vers `{good[:7]}`" in reply.text and "require_approval" in reply.text
    assert f"/deployments/deployment/{alerting.deployment_id}/run" in reply.text

    # Partial resolution: the older alert resolved, the newer one still fires (a new set of alerts). Held too,
    # and this group is told once in the same thread.
    resolved = alert("HighErrorRate", t0, ended=datetime.now(UTC))
    _, states = alerting.send_and_run(webhook("HighErrorRate", resolved, newer))

    assert [s.name for s in states] == ["Held"]
    assert len(sandbox.github.dispatches()) == 1 and sandbox.app.version == good
    assert len([m for m in sandbox.slack.thread(root.ts) if HELD_FR in m.text]) == 2
    repeat = alerting.send(webhook("HighErrorRate", resolved, newer))  # the same notification again
    assert [a["decision"] for a in repeat["alerts"]] == ["ignored", "held"], repeat

    # A group already told, with one more alert: answered `held` at the endpoint; no run, no other reply.
    again = alerting.send(
        webhook(
            "HighLatency",
            alert("HighLatency", t0 + timedelta(minutes=1)),
            alert("HighLatency", t0 + timedelta(minutes=2), instance="10.1.4.2:8080"),
        )
    )
    assert {a["decision"] for a in again["alerts"]} == {"held"}, again
    assert len([m for m in sandbox.slack.messages if HELD_FR in m.text]) == 2
    assert len([m for m in sandbox.slack.messages if m.thread_ts is None]) == 1  # no thread but the incident's

    # A person decides to go further back, by hand: never held, and told what just happened.
    manual = run_rollback(sandbox, sha=sandbox.commits.all[1], reason="by hand")

    assert manual.is_completed(), manual.message
    assert len(sandbox.github.dispatches()) == 2 and sandbox.app.version == sandbox.commits.all[1]
    manual_root = [m for m in sandbox.slack.messages if m.thread_ts is None][1]
    assert f"Un rollback automatique vient d'avoir lieu : vers `{good[:7]}`" in manual_root.current_text
    assert f"/runs/flow-run/{automatic.state_details.flow_run_id}" in manual_root.current_text
    assert "an automatic rollback of shop/production just happened" in manual.result().postmortem


def test_an_alert_storm_through_alertmanager_rolls_back_once(alerting: Alerting) -> None:
    sandbox = alerting.sandbox
    t0 = datetime.now(UTC) - timedelta(minutes=5)

    def wave(name: str, start: datetime, first: int) -> list[dict[str, Any]]:
        return [alert(name, start, f"10.1.{n // 250}.{n % 250}:8080") for n in range(first, first + 100)]

    with (
        Served(alerting.app) as served,
        AlertmanagerServer(
            f"{served.url}/alerts/alertmanager", token=TOKEN, group_by=("alertname", "service", "environment")
        ) as alertmanager,
    ):
        alertmanager.post_alerts(wave("HighErrorRate", t0, 0))
        wait_for(lambda: _fingerprints(served) >= 100, what="the first 100 alerts")
        first = alerting.run_started([seen.answer for seen in served.requests()])
        # The storm goes on after the rollback: 100 more alerts, another rule, started minutes later.
        alertmanager.post_alerts(wave("HighLatency", t0 + timedelta(minutes=2), 100))
        wait_for(lambda: _fingerprints(served) >= 200, what="all 200 alerts")
        later = alerting.run_started([seen.answer for seen in served.requests()])

    assert [s.type.value for s in first] == ["COMPLETED"], first
    assert later and all(s.name == "Held" for s in later), later  # the later alerts were decided by the flow
    assert {seen.status for seen in served.requests()} == {200}
    assert len(sandbox.github.dispatches()) == 1 and sandbox.app.version == sandbox.commits.last_known_good


def _fingerprints(served: Served) -> int:
    return len({a["fingerprint"] for seen in served.requests() for a in seen.body.get("alerts", [])})


def test_a_rollback_that_failed_before_deploying_holds_nothing(alerting: Alerting) -> None:
    sandbox = alerting.sandbox
    for sha in sandbox.commits.all[:-1]:  # no image to roll back to: the run fails before its deploy
        delete_tag(sandbox.registry.base_url, "acme/shop", sha)
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)

    _, [failed] = alerting.send_and_run(webhook("HighErrorRate", alert("HighErrorRate", minute + timedelta(seconds=5))))
    assert failed.is_failed() and sandbox.github.dispatches() == []
    sandbox.push(sandbox.commits.last_known_good)  # the image is back

    # Another incident, started in the same minute: it starts its own run, and that run rolls back.
    answer, [second] = alerting.send_and_run(
        webhook("HighLatency", alert("HighLatency", minute + timedelta(seconds=40)))
    )

    assert answer["alerts"][0]["decision"] == "started", answer
    assert second.is_completed(), second.message
    assert len(sandbox.github.dispatches()) == 1 and sandbox.app.version == sandbox.commits.last_known_good
