"""The `incident` flow: several services of one incident, one Slack thread, one post-mortem, against real servers.

The world is the sandbox plus two services (`api`, `web`), each with its own repository, images and running app,
all broken (sandbox/many_services.py). Each service's rollback really resolves, dispatches its workflow and gets
healthy; what is asserted is read back from the stand-ins, the apps and the Prefect API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flows.incident import incident
from runbook.config import using_config
from sandbox.many_services import ManyServicesSandbox
from sandbox.world import ENVIRONMENT, SERVICE
from tests.support.rollback import artifacts

SEED_1 = "Incident en production détecté. Investigation en cours."
SEED_2 = "Déclenchement de la procédure de rollback vers la version `{sha}`."
SEED_3 = "Rollback terminé. Le système est de nouveau opérationnel. Une analyse post-mortem sera effectuée."
SERVICES = (SERVICE, "api", "web")

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[ManyServicesSandbox]:
    with ManyServicesSandbox(tmp_path / "world", services=["api", "web"]) as sandbox:
        yield sandbox


def configure(world: ManyServicesSandbox, **after: list[str]) -> Path:
    """The world's configuration, every service configured, with `roll_back_after` orderings.

    A health check gives up after 1 s (instead of 5): a service kept unhealthy fails sooner.
    """
    data = world.config_data()
    for service, first in after.items():
        data["services"][service]["roll_back_after"] = first
    for service in data["services"].values():
        service["environments"][ENVIRONMENT]["health"]["deadline_seconds"] = 1
    return world.write_config(data, "incident.yaml")


def never_healthy(world: ManyServicesSandbox, service: str) -> set[str]:
    """Every version of `service` answers 500 (a rollback deploys, then fails its health check); those versions."""
    shas = {str(d["sha"]) for d in world.github.deployments(world.service(service).repository, ENVIRONMENT)}
    world.service(service).app.broken.update(shas)
    return shas


def table(artifact: Any) -> list[dict[str, Any]]:
    """A table artifact's rows."""
    data = artifact.data
    return list(json.loads(data) if isinstance(data, str) else data)


def run_incident(config: Path, *services: str, retries: int = 0, **parameters: Any) -> Any:
    members = [{"service": s, "environment": ENVIRONMENT} for s in services]
    with using_config(config):
        flow = incident.with_options(retries=retries, retry_delay_seconds=0) if retries else incident
        return flow(services=members, return_state=True, **parameters)


def last_known_good(world: ManyServicesSandbox, service: str) -> str:
    """The commit before the broken newest one (the sandbox's history is the same for every service)."""
    deployments = world.github.deployments(world.service(service).repository, ENVIRONMENT)
    return str(deployments[1]["sha"])


def dispatched(world: ManyServicesSandbox) -> dict[str, int]:
    """Workflow dispatches per repository name (`shop`, `api`, `web`)."""
    counts: dict[str, int] = {}
    for request in world.github.dispatches():
        name = request.path.split("/repos/", 1)[1].split("/")[1]
        counts[name] = counts.get(name, 0) + 1
    return counts


def the_thread(world: ManyServicesSandbox) -> tuple[Any, list[Any]]:
    """The one root in the channel and its replies; fails if anything was posted outside that thread."""
    roots = [m for m in world.slack.messages if m.thread_ts is None]
    assert len(roots) == 1, [m.text for m in world.slack.messages]
    root = roots[0]
    assert all(m.thread_ts in (None, root.ts) for m in world.slack.messages)
    return root, [m for m in world.slack.messages if m.thread_ts == root.ts]


def test_an_incident_of_three_services_recovers_them_all_in_one_thread_and_one_postmortem(
    world: ManyServicesSandbox,
) -> None:
    goods = {service: last_known_good(world, service) for service in SERVICES}

    config = configure(world)
    state = run_incident(config, *SERVICES, reason="5xx everywhere", incident="INC-7")

    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.outcome == "recovered" and summary.services == dict.fromkeys(
        (f"{s}/{ENVIRONMENT}" for s in SERVICES), "recovered"
    )
    assert summary.time_to_recovery > 0
    assert dispatched(world) == dict.fromkeys(SERVICES, 1)
    for service in SERVICES:
        assert world.healthy(service) and world.service(service).app.version == goods[service]
    root, replies = the_thread(world)
    # The root: seed message 1, every service with its final status, the incident's overall status.
    assert SEED_1 in root.current_text and "INC-7" in root.current_text and "5xx everywhere" in root.current_text
    for service in SERVICES:
        assert f"`{service}/{ENVIRONMENT}` — :white_check_mark:" in root.current_text, root.text
    assert "3 services rétablis" in root.current_text
    # Each service's seed messages as replies naming it, none broadcast; the incident's end broadcast, last.
    for service in SERVICES:
        mine = [m for m in replies if m.text.startswith(f"*{service}* ({ENVIRONMENT}) · ")]
        assert [SEED_2.format(sha=goods[service]) in mine[0].text, SEED_3 in mine[1].text] == [True, True]
        assert not any(m.reply_broadcast for m in mine)
    assert replies[-1].reply_broadcast and "Incident terminé : les 3 services" in replies[-1].text
    # One post-mortem with a row per service, and each service's own.
    found = artifacts(state.state_details.flow_run_id)
    key = "incident-shop-production-api-production-web-production"
    rows = {row["service"]: row for row in table(found[f"{key}-services"])}
    assert set(rows) == {f"{s}/{ENVIRONMENT}" for s in SERVICES}
    for service in SERVICES:
        row = rows[f"{service}/{ENVIRONMENT}"]
        assert row["outcome"] == "recovered" and goods[service].startswith(row["to"]) and row["digest"]
        assert row["time_to_recovery_s"] > 0
    markdown = str(found[key].data)
    assert "# Incident: 3 services: Recovered" in markdown and "(the last service healthy)" in markdown
    assert f"`api/{ENVIRONMENT}` deploy started" in markdown and f"**`web/{ENVIRONMENT}` healthy again**" in markdown
    subflows = _subflow_artifact_keys(state.state_details.flow_run_id)
    assert {f"rollback-{s}-{ENVIRONMENT}" for s in SERVICES} <= subflows

    # The UI's Retry of the completed incident: nothing left to do, nothing posted, nothing rolled back again.
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import AwaitingRetry

    said = world.slack.requests
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(state.state_details.flow_run_id, AwaitingRetry(), force=True)
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    with using_config(config):
        again = run_flow(incident, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    assert world.slack.requests == said and dispatched(world) == dict.fromkeys(SERVICES, 1)
    assert again.is_completed() and again.message.startswith("nothing left to do: this incident completed at ")


def test_a_service_waits_for_the_one_it_must_follow_and_stays_when_it_did_not_recover(
    world: ManyServicesSandbox,
) -> None:
    """`web` rolls back after `api` (healthy first); when `api` cannot, `web` is left as it is."""
    config = configure(world, web=["api"])
    state = run_incident(config, "web", "api")

    assert state.is_completed(), state.message
    api_healthy = _member_journal_time(state, "api", "healthy again")
    web_deploy = _member_journal_time(state, "web", "deploy started")
    assert web_deploy > api_healthy

    # A new bad version of both; this time api's image is missing.
    for service in ("api", "web"):
        world.break_service(service, f"feat: break {service} again")
    never_healthy(world, "api")
    before = dispatched(world)

    state = run_incident(config, "web", "api")

    assert state.is_failed()
    assert dispatched(world) == {**before, "api": before["api"] + 1}  # api deployed (unhealthy), web left alone
    found = artifacts(state.state_details.flow_run_id)
    rows = {row["service"]: row for row in table(found[_key("web", "api") + "-services"])}
    assert rows[f"web/{ENVIRONMENT}"]["outcome"] == "skipped" and "api/production had to go back first" in str(
        rows[f"web/{ENVIRONMENT}"]["why"]
    )
    root = [m for m in world.slack.messages if m.thread_ts is None][-1]
    assert "pas de rollback : api/production devait revenir avant" in root.current_text


def test_one_service_that_cannot_roll_back_does_not_stop_the_others_and_a_retry_resumes_only_it(
    world: ManyServicesSandbox,
) -> None:
    """Attempt 1: web never gets healthy, the others recover, the incident fails naming web (escalated); a person
    fixes web; the Retry finishes web's own run only."""
    broken = never_healthy(world, "web")  # deployed, it never passes its health check
    escalated: list[Any] = []

    def fixed_by_a_person(message: Any) -> None:
        if "non rétabli" in message.text and message.reply_broadcast:
            escalated.append(message)
            world.service("web").app.broken.difference_update(broken)

    world.slack.on_message = fixed_by_a_person
    state = run_incident(configure(world), *SERVICES, retries=1)

    # Attempt 1: shop and api recovered, web did not; the incident failed naming it, escalated in the thread.
    [escalation] = escalated
    root, replies = the_thread(world)  # the Retry kept the thread
    [root_then] = [text for text in root.updates if "1 service(s) sur 3 non rétabli(s)" in text]
    assert f"`web/{ENVIRONMENT}` — :x:" in root_then and f"`api/{ENVIRONMENT}` — :white_check_mark:" in root_then
    assert (
        "<!subteam^S0DEVTEAM>" in escalation.text and f"`web/{ENVIRONMENT}` : failed at health-check" in escalation.text
    )
    # The failure that made Prefect retry it (the state it was retried from: AwaitingRetry, with its message).
    said = [f"{s.name}: {s.message}" for s in _states(state) if "services not recovered" in str(s.message)]
    assert len(said) == 1 and "1 of 3 services not recovered: web/production" in said[0], said
    # The Retry.
    assert state.is_completed(), state.message
    assert dispatched(world) == dict.fromkeys(SERVICES, 1)  # shop and api were not rolled back a second time
    assert all(world.healthy(service) for service in SERVICES)
    assert (
        f"`{SERVICE}/{ENVIRONMENT}` — :white_check_mark: *Statut :* rétabli par une tentative précédente"
        in root.current_text
    )
    assert sum(SEED_2.split("`")[0] in m.text for m in replies) == 3
    markdown = str(artifacts(state.state_details.flow_run_id)[_key()].data)
    assert "Attempt:** 2" in markdown and "recovered-earlier" in markdown


def test_unknown_or_repeated_services_fail_before_anything(world: ManyServicesSandbox) -> None:
    config = configure(world)
    for services, expected in (((SERVICE, "nope"), "unknown service 'nope'"), ((SERVICE, SERVICE), "twice")):
        state = run_incident(config, *services)
        assert state.is_failed() and expected in str(state.message), state.message
    assert world.slack.messages == [] and world.github.dispatches() == []


def _key(*services: str) -> str:
    return "incident-" + "-".join(f"{s}-{ENVIRONMENT}" for s in (services or SERVICES))


def _subflow_artifact_keys(flow_run_id: Any) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
    keys: set[str] = set()
    for run in runs:
        keys |= {key for key in artifacts(run.id) if key}
    return keys


def _member_journal_time(state: Any, service: str, event: str) -> str:
    """When the incident's merged timeline says `service`'s `event` happened (its timestamp, sortable)."""
    markdown = str(artifacts(state.state_details.flow_run_id)[_key(*_services_of(state))].data)
    for line in markdown.splitlines():
        if f"`{service}/{ENVIRONMENT}`" in line and event in line and line.startswith("- 20"):
            return line[2:29]
    raise AssertionError(f"no {service} {event!r} in the timeline:\n{markdown}")


def _services_of(state: Any) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    return [s["service"] for s in run.parameters["services"]]


@pytest.fixture
def no_hold_left_behind() -> Iterator[None]:
    """The holds an alert's incident writes must not hold another test's alerts in this worker's session."""
    from prefect.client.orchestration import get_client

    from runbook import hold

    yield
    with get_client(sync_client=True) as client:
        for service in ("api", "web"):
            if client.read_variable_by_name(hold.variable_name(service, ENVIRONMENT)) is not None:
                client.delete_variable_by_name(hold.variable_name(service, ENVIRONMENT))


@pytest.mark.usefixtures("no_hold_left_behind")
def test_an_alert_group_naming_two_services_starts_one_incident_even_sent_twice_to_two_replicas(
    world: ManyServicesSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Alertmanager group firing for api and web: one incident run, whichever endpoint replica gets it."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from commands.alert_endpoint import create_app
    from deployments.spec import with_choices
    from runbook.alerts.launcher import IncidentLauncher, PrefectLauncher
    from runbook.config import load_config
    from sandbox.alert_bodies import alertmanager_body
    from tests.support.alert_app import TOKEN, post

    monkeypatch.setenv("RUNBOOK_TEST_ALERT_TOKEN", TOKEN)
    data = yaml_data(configure(world))
    data["alerts"] = {"token": {"env": "RUNBOOK_TEST_ALERT_TOKEN"}}
    config_path = world.write_config(data, "alerts.yaml")
    config = load_config(config_path)
    with using_config(config_path):
        with_choices(incident.to_deployment(name="alerts"), config).apply()
    started = datetime.now(UTC)
    body = alertmanager_body("api", starts_at=started, fingerprint="a1")
    body["alerts"] += alertmanager_body("web", starts_at=started, fingerprint="w1")["alerts"]
    body["groupKey"] = '{}:{alertname="HighErrorRate"}'

    def replica() -> Any:
        return create_app(
            config, PrefectLauncher("rollback/none"), token=TOKEN, incidents=IncidentLauncher("incident/alerts")
        )

    first = post(replica(), "/alerts/alertmanager", body).json()["alerts"]
    again = post(replica(), "/alerts/alertmanager", body).json()["alerts"]  # another replica, the same group

    assert [a["decision"] for a in first] == ["started", "started"], first
    assert len({a["run_id"] for a in first + again}) == 1 and {a["decision"] for a in again} == {"already-running"}
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(first[0]["run_id"])
    assert run.parameters["services"] == [
        {"service": "api", "environment": ENVIRONMENT},
        {"service": "web", "environment": ENVIRONMENT},
    ]
    with using_config(config_path):
        state = run_flow(incident, flow_run=run, return_type="state")

    assert state.is_completed(), state.message
    assert dispatched(world) == {"api": 1, "web": 1} and world.healthy("api") and world.healthy("web")
    root, _ = the_thread(world)
    assert "Alerte : HighErrorRate" in root.current_text
    markdown = str(artifacts(run.id)[_key("api", "web")].data)
    assert "**Trigger:** alert" in markdown and "`fingerprint`" not in markdown


def yaml_data(path: Path) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def _states(state: Any) -> list[Any]:
    """Every state the flow run of `state` went through, oldest first."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sorted(client.read_flow_run_states(state.state_details.flow_run_id), key=lambda s: s.timestamp)
