"""The alert endpoint: the pure decision, the app with a recording launcher, a real Alertmanager, a real Prefect API."""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from commands.alert_endpoint import create_app
from runbook.alerts.decision import Ignore, RollbackDecision, decide
from runbook.alerts.launcher import Launch, PrefectLauncher, RollbackRequest, idempotency_key
from runbook.alerts.model import Alert, label_fingerprint
from runbook.alerts.source import SOURCES
from runbook.alerts.wire import PayloadError, Unauthorized, check_bearer_token
from runbook.config import RunbookConfig, parse_config
from runbook.errors import ConfigError, LaunchError
from runbook.incident import CONTEXT_KEY, from_run_context
from sandbox.alertmanager import AlertmanagerServer
from sandbox.fixtures import load_fixture
from tests.support.alert_app import AUTH, TOKEN, Served, call, post
from tests.support.waiting import wait_for

FIRING_LINK = load_fixture("alerts", "alertmanager-firing")["alerts"][0]["generatorURL"]
FIRING_START = datetime(2026, 8, 20, 10, 12, 30, 123000, tzinfo=UTC)
T = TypeVar("T")


def make_config(**alerts: Any) -> RunbookConfig:
    """Two services; alerts carry `env` and must be `severity=critical` (as in the fixtures) unless overridden."""
    environment = {
        "deploy": {"type": "webhook", "url": "http://127.0.0.1:9/deploy"},
        "health": {"probes": [{"url": "http://127.0.0.1:9/health"}]},
    }
    settings: dict[str, Any] = {
        "token": {"env": "RUNBOOK_TEST_ALERT_TOKEN"},
        "environment_label": "env",
        "match": {"severity": "critical"},
    }
    settings.update(alerts)
    return parse_config(
        {
            "alerts": settings,
            "services": {
                "checkout": {
                    "repository": "acme/checkout",
                    "image": "127.0.0.1:5000/acme/checkout",
                    "environments": {"production": environment, "staging": environment},
                },
                "shop": {
                    "repository": "acme/shop",
                    "image": "127.0.0.1:5000/acme/shop",
                    "environments": {"production": environment},
                },
            },
        }
    )


CONFIG = make_config()


def alerts_of(name: str) -> list[Alert]:
    data = load_fixture("alerts", name)
    return SOURCES["grafana" if name.startswith("grafana") else "alertmanager"].parse(data)


def with_labels(alert: Alert, **labels: str) -> Alert:
    return Alert(
        alert.name,
        alert.status,
        {**alert.labels, **labels},
        alert.annotations,
        alert.starts_at,
        alert.link,
        alert.fingerprint,
    )


# --- decide(): plain data in, a decision out --------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["alertmanager-firing", "alertmanager-firing.pre-v0.32"])
def test_firing_alerts_roll_back_with_reason_start_and_link(fixture: str) -> None:
    alerts = alerts_of(fixture)

    decisions = [decide(alert, CONFIG) for alert in alerts]

    expected = RollbackDecision(
        "checkout", "production", "HighErrorRate: checkout 5xx ratio above 5%", FIRING_START, FIRING_LINK
    )
    assert decisions == [expected, expected]
    assert [a.fingerprint for a in alerts] == ["3f40106c17c8ba42", "554baf638e4e79b9"]


def test_resolved_alerts_are_ignored() -> None:
    decisions = [decide(alert, CONFIG) for alert in alerts_of("alertmanager-resolved")]

    assert decisions == [Ignore("resolved", "checkout", "production")] * 2


def test_captured_alertmanager_025_body_uses_the_default_environment() -> None:
    config = make_config(environment_label="environment", default_environment="production", match={"rollback": "true"})
    (alert,) = alerts_of("alertmanager-0.25-captured")

    decision = decide(alert, config)

    assert isinstance(decision, RollbackDecision)
    assert (decision.service, decision.environment) == ("checkout", "production")
    assert decision.reason == "HighErrorRate: 5xx rate 100 req/s on checkout"
    assert decision.detected_at == datetime(2026, 11, 26, 13, 7, 54, 18000, tzinfo=UTC)
    assert decision.link is not None and decision.link.startswith("http://vm:9090/graph?g0.expr=")


def test_unknown_service_is_refused_naming_the_known_ones() -> None:
    alert = with_labels(alerts_of("alertmanager-firing")[0], service="ghcr.io/evil/image")

    assert decide(alert, CONFIG) == Ignore(
        "unknown service 'ghcr.io/evil/image' (known: checkout, shop)", "ghcr.io/evil/image", "production"
    )


def test_alert_without_service_label_is_refused() -> None:
    alert = alerts_of("alertmanager-firing")[0]
    labels = {k: v for k, v in alert.labels.items() if k != "service"}
    alert = Alert(alert.name, "firing", labels, alert.annotations, alert.starts_at, alert.link, alert.fingerprint)

    decision = decide(alert, CONFIG)

    assert isinstance(decision, Ignore)
    assert decision.reason == "unknown service: the alert has no 'service' label (known: checkout, shop)"


def test_unknown_or_missing_environment_is_refused() -> None:
    alert = alerts_of("alertmanager-firing")[0]

    unknown = decide(with_labels(alert, env="eu-west"), CONFIG)
    no_label = decide(alert, make_config(environment_label="environment"))

    assert unknown == Ignore(
        "unknown environment 'eu-west' for service 'checkout' (known: production, staging)", "checkout", "eu-west"
    )
    assert isinstance(no_label, Ignore)
    assert no_label.reason == (
        "unknown environment: the alert has no 'environment' label and alerts.default_environment is not set"
    )


def test_alert_without_the_match_labels_is_not_eligible() -> None:
    alert = alerts_of("alertmanager-firing")[0]

    missing = decide(alert, make_config(match={"rollback": "auto"}))
    other_value = decide(with_labels(alert, severity="warning"), CONFIG)

    assert isinstance(missing, Ignore) and isinstance(other_value, Ignore)
    assert missing.reason == "not eligible: missing match label rollback=auto"
    assert other_value.reason == "not eligible: label severity='warning' does not match severity=critical"


def test_grafana_docs_example_is_parsed_and_not_eligible() -> None:
    alerts = alerts_of("grafana-firing")

    decisions = [decide(alert, CONFIG) for alert in alerts]

    assert [a.name for a in alerts] == ["High memory usage", "High CPU usage"]
    assert alerts[0].starts_at == datetime(2021, 10, 12, 7, 51, 3, 157076, tzinfo=UTC)  # +02:00 -> UTC
    assert alerts[0].link == "https://play.grafana.org/alerting/1afz29v7z/edit"  # empty panel/dashboard URLs
    assert [d.reason for d in decisions if isinstance(d, Ignore)] == [
        "not eligible: missing match label severity=critical"
    ] * 2


def test_grafana_alert_with_labels_rolls_back_linking_the_panel() -> None:
    data = load_fixture("alerts", "grafana-firing")
    data["alerts"][0]["labels"].update(service="shop", env="production", severity="critical")
    data["alerts"][0]["panelURL"] = "https://grafana.example.com/d/abc?viewPanel=2"
    alert = SOURCES["grafana"].parse(data)[0]

    decision = decide(alert, CONFIG)

    assert decision == RollbackDecision(
        "shop",
        "production",
        "High memory usage: This alert was triggered for zone us-1",
        datetime(2021, 10, 12, 7, 51, 3, 157076, tzinfo=UTC),
        "https://grafana.example.com/d/abc?viewPanel=2",
    )


def test_missing_fingerprint_is_computed_as_alertmanager_does() -> None:
    data = load_fixture("alerts", "alertmanager-firing")
    for alert in data["alerts"]:
        del alert["fingerprint"]

    alerts = SOURCES["alertmanager"].parse(data)

    assert [a.fingerprint for a in alerts] == ["3f40106c17c8ba42", "554baf638e4e79b9"]
    assert label_fingerprint({}) == "cbf29ce484222325"  # FNV-1a 64 offset basis, as Alertmanager's empty set


# --- the sources -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fixtures"),
    [
        (
            "alertmanager",
            [
                "alertmanager-firing",
                "alertmanager-firing.pre-v0.32",
                "alertmanager-resolved",
                "alertmanager-0.25-captured",
            ],
        ),
        ("grafana", ["grafana-firing"]),
    ],
)
def test_sources_are_registered_by_name_and_parse_their_fixtures(name: str, fixtures: list[str]) -> None:
    source = SOURCES[name]

    assert (source.name, source.path, source.authenticates_body) == (name, f"/alerts/{name}", False)
    for fixture in fixtures:
        data = load_fixture("alerts", fixture)
        alerts = source.parse(data)
        wire = data["alerts"]
        assert [a.fingerprint for a in alerts] == [w.get("fingerprint") or label_fingerprint(w["labels"]) for w in wire]
        assert [(a.status, a.labels, a.name) for a in alerts] == [
            (w["status"], w["labels"], w["labels"]["alertname"]) for w in wire
        ]
        assert all(a.group_key == data.get("groupKey", "") and a.starts_at.tzinfo == UTC for a in alerts)


def test_sources_are_the_two_shipped_ones() -> None:
    assert sorted(SOURCES) == ["alertmanager", "grafana"]
    assert all(key == source.name for key, source in SOURCES.items())
    assert len({source.path for source in SOURCES.values()}) == len(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_source_refuses_a_body_naming_the_field(name: str) -> None:
    data = load_fixture("alerts", "grafana-firing" if name == "grafana" else "alertmanager-firing")
    del data["alerts"][1]["startsAt"]

    with pytest.raises(PayloadError, match=r"^invalid payload: alerts\.1\.startsAt: Field required$") as caught:
        SOURCES[name].parse(data)
    assert caught.value.problems == ["alerts.1.startsAt: Field required"]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_source_wants_the_bearer_token(name: str) -> None:
    source, expected = SOURCES[name], TOKEN.encode()

    source.authenticate({"authorization": f"Bearer {TOKEN}"}, b"{}", expected)
    source.authenticate({"Authorization": f"bearer  {TOKEN} "}, b"", expected)  # any case, as HTTP has it
    for headers in ({}, {"authorization": f"Bearer {TOKEN}x"}, {"authorization": f"Basic {TOKEN}"}):
        with pytest.raises(Unauthorized, match="bearer token") as caught:
            source.authenticate(headers, b"{}", expected)
        assert TOKEN not in str(caught.value)
    with pytest.raises(Unauthorized, match="invalid bearer token"):
        check_bearer_token({"authorization": "Bearer jeton-é"}, expected)


def test_the_alert_context_carries_the_group_within_its_limits() -> None:
    start = datetime(2026, 8, 20, 12, 12, 30, tzinfo=UTC)
    request = RollbackRequest(
        "shop", "production", "r", start, "http://x/" + "q" * 2000, "a", "N" * 600, (("service", "shop"),),
        group_key="{}:" + "g" * 2100, alerts=(("b", start), ("a", start)), source="grafana",
    )  # fmt: skip

    context = request.alert_context()
    again = from_run_context(context.to_run_context())

    assert again == context and set(context.to_run_context()) == {CONTEXT_KEY}
    assert (context.name, context.link, context.starts_at, context.source) == ("N" * 499 + "…", None, start, "grafana")
    assert context.group_key.startswith("sha256:") and context.group_key == request.alert_context().group_key
    assert (context.labels, context.fingerprints) == ({"service": "shop"}, ("a", "b"))


def test_idempotency_key_is_the_alert_group_and_its_alerts_not_the_start_minute() -> None:
    start = datetime(2026, 8, 20, 12, 12, 30, tzinfo=UTC)
    paris = start.astimezone(timezone(timedelta(hours=2)))

    def key(group: str, *alerts: tuple[str, datetime], target: str = "shop") -> str:
        return idempotency_key(RollbackRequest(target, "production", "r", start, None, alerts[0][0], group_key=group,
                                               alerts=alerts))  # fmt: skip

    group, later = '{}:{service="shop"}', start + timedelta(seconds=5)
    first = key(group, ("a", start), ("b", later))

    assert first.startswith("alert:shop:production:") and "2026" not in first
    # A repeat notification (any order, any time zone) is the same key: it answers the same run.
    assert key(group, ("b", later), ("a", paris)) == first
    # Another incident in the same minute (another group, other alerts), the same alerts minus a resolved one,
    # and the same alert firing again later (same fingerprint, new start) each get their own key.
    others = [
        key('{}:{alertname="HighLatency"}', ("a", start), ("b", later)),
        key(group, ("c", start + timedelta(seconds=20))),
        key(group, ("b", later)),
        key(group, ("a", start + timedelta(days=7)), ("b", later + timedelta(days=7))),
        key(group, ("a", start), ("b", later), target="checkout"),
    ]
    assert len({first, *others}) == 6


# --- the app, with a recording launcher ---------------------------------------------------------------------


class RecordingLauncher:
    """Our RunLauncher protocol, in memory: records requests, one active run per (service, environment)."""

    def __init__(self, *, fail: str | None = None) -> None:
        self.requests: list[RollbackRequest] = []
        self.active: dict[tuple[str, str], str] = {}
        self.ended: dict[str, str] = {}
        self.created: list[str] = []
        self.fail = fail
        self._lock = threading.Lock()

    async def launch(self, request: RollbackRequest) -> Launch:
        with self._lock:
            self.requests.append(request)
            if self.fail:
                raise LaunchError(self.fail)
            key = idempotency_key(request)
            if key in self.ended:
                return Launch(self.ended[key], False, "COMPLETED")
            run_id = self.active.get((request.service, request.environment))
            if run_id is not None:
                return Launch(run_id, False, "SCHEDULED")
            run_id = str(uuid.uuid4())
            self.created.append(run_id)
            self.active[(request.service, request.environment)] = run_id
            return Launch(run_id, True, "SCHEDULED")

    def finish(self, request: RollbackRequest) -> None:
        with self._lock:
            self.ended[idempotency_key(request)] = self.active.pop((request.service, request.environment))

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)


@pytest.fixture
def launcher() -> RecordingLauncher:
    return RecordingLauncher()


@pytest.fixture
def app(launcher: RecordingLauncher) -> FastAPI:
    return create_app(CONFIG, launcher, token=TOKEN)


def test_healthz_needs_no_token(app: FastAPI) -> None:
    response = call(app, "GET", "/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer jeton-é".encode()},  # non-ASCII: compare_digest on str would raise, not refuse
    ],
    ids=["missing", "wrong", "basic-scheme", "longer", "empty", "non-ascii"],
)
def test_missing_or_wrong_token_is_401_and_starts_nothing(
    app: FastAPI, launcher: RecordingLauncher, headers: dict[str, Any]
) -> None:
    response = post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-firing"), headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "bearer token" in response.json()["error"]
    assert TOKEN not in response.text
    assert launcher.count == 0


def test_grafana_route_needs_the_token_too(app: FastAPI, launcher: RecordingLauncher) -> None:
    response = post(app, "/alerts/grafana", load_fixture("alerts", "grafana-firing"), headers={})

    assert response.status_code == 401 and launcher.count == 0


def test_token_is_read_from_the_configured_secret(launcher: RecordingLauncher, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOK_TEST_ALERT_TOKEN", "from-the-environment")
    app = create_app(CONFIG, launcher)

    body = load_fixture("alerts", "alertmanager-resolved")
    ok = post(app, "/alerts/alertmanager", body, headers={"Authorization": "Bearer from-the-environment"})
    refused = post(app, "/alerts/alertmanager", body)

    assert (ok.status_code, refused.status_code) == (200, 401)


def test_empty_token_or_no_alerts_section_is_a_config_error(launcher: RecordingLauncher) -> None:
    without_alerts = CONFIG.model_copy(update={"alerts": None})

    with pytest.raises(ConfigError, match="token is empty"):
        create_app(CONFIG, launcher, token="  ")
    with pytest.raises(ConfigError, match="no 'alerts' section"):
        create_app(without_alerts, launcher, token=TOKEN)


def test_body_limit_is_16_mib_by_default_bounded_and_configurable() -> None:
    assert CONFIG.alerts is not None and CONFIG.alerts.max_body_bytes == 16 * 1024 * 1024
    assert make_config(max_body_bytes=65536).alerts.max_body_bytes == 65536  # type: ignore[union-attr]
    for wrong in (1024, 512 * 1024 * 1024):
        with pytest.raises(ConfigError, match="max_body_bytes"):
            make_config(max_body_bytes=wrong)


def test_oversized_body_is_413_before_parsing(launcher: RecordingLauncher) -> None:
    app = create_app(make_config(max_body_bytes=65536), launcher, token=TOKEN)
    body = load_fixture("alerts", "alertmanager-firing")
    body["commonAnnotations"]["description"] = "x" * 65536

    response = post(app, "/alerts/alertmanager", body)

    assert response.status_code == 413
    assert "over the limit of 65536 bytes" in response.json()["error"]
    assert launcher.count == 0


def test_oversized_chunked_body_without_length_is_413(launcher: RecordingLauncher) -> None:
    app = create_app(make_config(max_body_bytes=65536), launcher, token=TOKEN)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"alerts": ['
        for _ in range(100):
            yield b" " * 4096

    response = call(app, "POST", "/alerts/alertmanager", content=chunks(), headers=AUTH)

    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413 and launcher.count == 0


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        (b"{not json", 400, "body is not valid JSON"),
        (b"", 400, "body is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "body is not valid JSON"),
        (b"[]", 422, "(body): Input should be"),
        (b'{"version": "4", "status": "firing"}', 422, "alerts: Field required"),
        (b'{"alerts": [{"status": "firing", "labels": {}}]}', 422, "alerts.0.startsAt: Field required"),
        (b'{"alerts": [{"status": "pending", "labels": {}, "startsAt": "2026-01-01T00:00:00Z"}]}', 422, "status"),
        (b'{"alerts": [{"status": "firing", "labels": {"a": 1}, "startsAt": "x"}]}', 422, "alerts.0.labels.a"),
        (b'"alerts"', 422, "(body)"),
    ],
    ids=["garbage", "empty", "deep-nesting", "array", "no-alerts", "no-startsAt", "bad-status", "bad-label", "string"],
)
def test_invalid_body_is_4xx_naming_the_problem(
    app: FastAPI, launcher: RecordingLauncher, content: bytes, status: int, needle: str
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}

    response = call(app, "POST", "/alerts/alertmanager", content=content, headers=headers)

    assert response.status_code == status, response.text
    assert needle in response.json()["error"], response.json()
    assert launcher.count == 0


def test_firing_group_starts_one_rollback_for_its_alerts(app: FastAPI, launcher: RecordingLauncher) -> None:
    response = post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-firing"))

    assert response.status_code == 200, response.text
    first, second = response.json()["alerts"]
    assert (first["fingerprint"], first["decision"]) == ("3f40106c17c8ba42", "started")
    assert (second["fingerprint"], second["decision"]) == ("554baf638e4e79b9", "already-running")
    assert first["run_id"] == second["run_id"] is not None
    assert (first["service"], first["environment"]) == ("checkout", "production")
    [request] = launcher.requests
    assert request == RollbackRequest(
        "checkout",
        "production",
        "HighErrorRate: checkout 5xx ratio above 5%",
        FIRING_START,
        FIRING_LINK,
        "3f40106c17c8ba42",
        "HighErrorRate",
        request.alert_labels,
        group_key='{}/{env="production"}:{alertname="HighErrorRate", service="checkout"}',
        alerts=(("3f40106c17c8ba42", FIRING_START), ("554baf638e4e79b9", FIRING_START)),
        hold_minutes=30,
        source="alertmanager",
    )
    labels = dict(request.alert_labels)
    assert (labels["alertname"], labels["service"], labels["severity"]) == ("HighErrorRate", "checkout", "critical")


def test_repeat_notification_answers_the_running_rollback(app: FastAPI, launcher: RecordingLauncher) -> None:
    first = post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-firing")).json()
    again = post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-firing.pre-v0.32")).json()

    assert [a["decision"] for a in again["alerts"]] == ["already-running", "already-running"]
    assert {a["run_id"] for a in again["alerts"]} == {first["alerts"][0]["run_id"]}


def test_alert_whose_rollback_ended_is_not_rolled_back_again(app: FastAPI, launcher: RecordingLauncher) -> None:
    post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-firing"))
    launcher.finish(launcher.requests[0])

    answer = post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-firing")).json()

    assert [a["decision"] for a in answer["alerts"]] == ["ignored", "ignored"]
    assert "already ran" in answer["alerts"][0]["reason"] and "COMPLETED" in answer["alerts"][0]["reason"]


def test_resolved_alerts_start_nothing(app: FastAPI, launcher: RecordingLauncher) -> None:
    response = post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-resolved"))

    assert response.status_code == 200
    assert [(a["decision"], a["reason"], a["run_id"]) for a in response.json()["alerts"]] == [
        ("ignored", "resolved", None)
    ] * 2
    assert launcher.count == 0


def test_one_payload_several_services_one_launch_each(app: FastAPI, launcher: RecordingLauncher) -> None:
    body = load_fixture("alerts", "alertmanager-firing")
    template = body["alerts"][0]
    body["alerts"] = []
    for index, (service, env) in enumerate(
        [
            ("checkout", "production"),
            ("shop", "production"),
            ("checkout", "production"),
            ("nope", "production"),
            ("checkout", "staging"),
            ("checkout", "production"),
        ]
    ):
        alert = copy.deepcopy(template)
        alert["labels"].update(service=service, env=env, instance=f"10.0.0.{index}:8080")
        alert["fingerprint"] = f"{index:016x}"
        alert["startsAt"] = f"2026-08-20T10:1{5 - index}:00Z"  # later alerts started earlier
        body["alerts"].append(alert)

    answer = post(app, "/alerts/alertmanager", body).json()["alerts"]

    assert [a["decision"] for a in answer] == [
        "already-running",
        "started",
        "already-running",
        "ignored",
        "started",
        "started",
    ]
    assert answer[0]["run_id"] == answer[2]["run_id"] == answer[5]["run_id"]
    assert answer[3]["reason"] == "unknown service 'nope' (known: checkout, shop)"
    assert sorted((r.service, r.environment) for r in launcher.requests) == [
        ("checkout", "production"),
        ("checkout", "staging"),
        ("shop", "production"),
    ]
    checkout = next(r for r in launcher.requests if (r.service, r.environment) == ("checkout", "production"))
    assert (checkout.alert_fingerprint, checkout.detected_at) == (
        f"{5:016x}",
        datetime(2026, 8, 20, 10, 10, tzinfo=UTC),
    )


def test_grafana_route_decides_per_alert(app: FastAPI, launcher: RecordingLauncher) -> None:
    body = load_fixture("alerts", "grafana-firing")
    plain = post(app, "/alerts/grafana", body).json()["alerts"]
    body["alerts"][1]["labels"].update(service="shop", env="production", severity="critical")
    eligible = post(app, "/alerts/grafana", body).json()["alerts"]

    assert [a["decision"] for a in plain] == ["ignored", "ignored"]
    assert [a["decision"] for a in eligible] == ["ignored", "started"]
    assert launcher.requests[0].link == "https://play.grafana.org/alerting/d1rdpdv7k/edit"
    assert launcher.requests[0].reason == "High CPU usage: This alert was triggered for zone eu-1"
    assert launcher.requests[0].source == "grafana"


def test_launcher_failure_is_503_with_the_reason() -> None:
    launcher = RecordingLauncher(fail="the Prefect API failed: ConnectError: connection refused")
    app = create_app(CONFIG, launcher, token=TOKEN)

    failed = post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-firing"))
    resolved = post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-resolved"))

    assert failed.status_code == 503
    assert failed.json()["error"] == (
        "cannot start the rollback of checkout/production: the Prefect API failed: ConnectError: connection refused"
    )
    assert resolved.status_code == 200  # nothing to launch: the launcher is not needed


def test_token_and_header_never_logged(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")

    post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-firing"))
    post(
        app,
        "/alerts/alertmanager",
        load_fixture("alerts", "alertmanager-firing"),
        headers={"Authorization": "Bearer x"},
    )

    assert "refused: 401" in caplog.text
    assert TOKEN not in caplog.text and "Bearer" not in caplog.text


def test_alerts_that_start_nothing_are_logged_once_per_group_at_warning(
    launcher: RecordingLauncher, caplog: pytest.LogCaptureFixture
) -> None:
    # The rules label the environment `env`; the configuration expects `environment`: nothing can run.
    app = create_app(make_config(environment_label="environment"), launcher, token=TOKEN)
    body = load_fixture("alerts", "alertmanager-firing")
    body["alerts"].append({**body["alerts"][0], "labels": {**body["alerts"][0]["labels"], "service": "nope"}})
    caplog.set_level("INFO", logger="runbook.alerts")

    answer = post(app, "/alerts/alertmanager", body).json()["alerts"]
    post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-resolved"))

    assert [a["decision"] for a in answer] == ["ignored"] * 3 and launcher.count == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "alertmanager webhook, alert group "
        '{}/{env="production"}:{alertname="HighErrorRate", service="checkout"}: 3 of 3 alert(s) started nothing: '
        "unknown environment: the alert has no 'environment' label and alerts.default_environment is not set "
        "(2 alert(s)); unknown service 'nope' (known: checkout, shop) (1 alert(s))"
    ]
    # Resolved alerts are expected to start nothing: said, but not as a warning.
    assert any("2 of 2 alert(s) started nothing: resolved" in r.getMessage() for r in caplog.records)


# --- the real chain: Alertmanager -> webhook -> app served by uvicorn ---------------------------------------


def storm(
    service: str, environment: str, count: int, *, ends_at: str | None = None, kubernetes: bool = False
) -> list[dict[str, Any]]:
    """`count` alerts of one rule on as many instances of one service, as Prometheus would post them.

    `kubernetes`: with the labels and annotations a Kubernetes setup adds (pod, namespace, cluster, runbook and
    dashboard links...): about 1.1 KB per alert in Alertmanager's webhook body.
    """
    alerts = []
    for index in range(count):
        alert: dict[str, Any] = {
            "labels": {
                "alertname": "HighErrorRate",
                "service": service,
                "env": environment,
                "severity": "critical",
                "instance": f"10.1.{index // 250}.{index % 250}:8080",
            },
            "annotations": {"summary": f"{service} 5xx ratio above 5%"},
            "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=errors",
        }
        if kubernetes:
            pod = f"{service}-7d9f8b6c4-{index:05x}"
            alert["labels"].update(
                team="payments", cluster="prod-eu-west-1", region="eu-west-1", namespace=f"{service}-prod",
                pod=pod, container="app", job="kubernetes-pods", prometheus="monitoring/k8s",
            )  # fmt: skip
            alert["annotations"].update(
                description=f"5xx responses are 12.3% of requests on {pod} over the last 5 minutes (threshold 5%).",
                runbook_url=f"https://runbooks.example.com/{service}/high-error-rate",
                dashboard=f"https://grafana.example.com/d/{service}-overview?var-pod={pod}",
            )
            alert["generatorURL"] = (
                "http://prometheus-k8s-0:9090/graph?g0.expr=sum+by+%28service%2C+env%2C+pod%29+%28rate%28"
                "http_requests_total%7Bcode%3D~%225..%22%7D%5B5m%5D%29%29+%2F+sum+by+%28service%2C+env%2C+pod"
                "%29+%28rate%28http_requests_total%5B5m%5D%29%29+%3E+0.05&g0.tab=1"
            )
        if ends_at:
            alert["endsAt"] = ends_at
        alerts.append(alert)
    return alerts


def fingerprints_seen(served: Served) -> set[str]:
    return {a["fingerprint"] for seen in served.requests() for a in seen.body.get("alerts", [])}


@pytest.fixture
def served(app: FastAPI) -> Iterator[Served]:
    with Served(app) as server:
        yield server


def alertmanager_for(served: Served, token: str = TOKEN, group_wait: str = "0s") -> AlertmanagerServer:
    url = f"{served.url}/alerts/alertmanager"
    return AlertmanagerServer(url, token=token, group_by=("service", "env"), group_wait=group_wait)


def test_alert_storm_through_alertmanager_starts_one_rollback(
    served: Served, launcher: RecordingLauncher, record_property: Callable[[str, object], None]
) -> None:
    with alertmanager_for(served) as alertmanager:
        posted = time.monotonic()
        alertmanager.post_alerts(storm("checkout", "production", 50))
        first = wait_for(served.requests, what="the first webhook")[0]
        wait_for(lambda: len(fingerprints_seen(served)) == 50, what="all 50 alerts to reach the app")
        attempts, failed = alertmanager.notifications()

    latency = first.at - posted
    record_property("alertmanager_webhook_latency_seconds", round(latency, 4))
    print(f"POST /api/v2/alerts -> webhook at the app: {latency * 1000:.0f} ms")
    assert latency < 2.0
    # One launcher call per webhook (Alertmanager sends the group as it fills), one run created in all.
    assert launcher.count == len(served.requests()) and launcher.created == [launcher.active["checkout", "production"]]
    assert all(seen.status == 200 for seen in served.requests())
    answers = [a for seen in served.requests() for a in seen.answer["alerts"]]
    assert {a["run_id"] for a in answers} == {launcher.active["checkout", "production"]}
    assert sum(a["decision"] == "started" for a in answers) == 1
    assert attempts >= 1 and failed == 0


def test_alertmanager_with_a_wrong_token_gets_401_and_starts_nothing(
    served: Served, launcher: RecordingLauncher
) -> None:
    with alertmanager_for(served, token="not-the-token") as alertmanager:
        alertmanager.post_alerts(storm("checkout", "production", 3))
        wait_for(lambda: alertmanager.notifications()[1] >= 1, what="Alertmanager to count a failed notification")
        log = alertmanager.log()

    assert served.requests() and {seen.status for seen in served.requests()} == {401}
    assert "401" in log  # Alertmanager's own account of the failure
    assert launcher.count == 0


def test_resolved_alerts_through_alertmanager_start_nothing(served: Served, launcher: RecordingLauncher) -> None:
    with alertmanager_for(served) as alertmanager:
        alerts = storm("shop", "production", 3)
        alertmanager.post_alerts(alerts)
        wait_for(lambda: len(fingerprints_seen(served)) == 3, what="the firing alerts")
        calls = launcher.count

        ended = (datetime.now(UTC) - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
        alertmanager.post_alerts(storm("shop", "production", 3, ends_at=ended))
        resolved = wait_for(
            lambda: [s for s in served.requests() if s.body.get("status") == "resolved"], what="the resolved webhook"
        )

    assert [a["status"] for a in resolved[0].body["alerts"]] == ["resolved"] * 3
    assert [a["decision"] for a in resolved[0].answer["alerts"]] == ["ignored"] * 3
    assert launcher.count == calls and len(launcher.created) == 1  # the resolved webhook launched nothing


def test_a_sender_that_stalls_mid_body_gets_408_and_is_disconnected(launcher: RecordingLauncher) -> None:
    app = create_app(CONFIG, launcher, token=TOKEN, body_seconds=1)
    head = (
        "POST /alerts/alertmanager HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 5000\r\n\r\n"
    )

    with Served(app) as served, socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"alerts": [')  # and then nothing more
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):  # until the endpoint closes the connection
            answer += chunk
        elapsed = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"the body did not arrive within 1 s" in answer
    assert 0.9 < elapsed < 3.0, elapsed
    assert launcher.count == 0


# --- PrefectLauncher against a real Prefect API -------------------------------------------------------------


DEPLOYMENT = "rollback/alerts-test"  # its own name: other tests may serve the real `rollback/rollback`


def run(coroutine: Awaitable[T]) -> T:
    async def wrap() -> T:
        return await coroutine

    return asyncio.run(wrap())


@pytest.fixture(scope="module")
def deployment_id(prefect_server: None) -> Iterator[uuid.UUID]:
    from prefect.deployments.runner import RunnerDeployment

    from flows.rollback import rollback

    deployment = rollback.to_deployment(name="alerts-test")
    assert isinstance(deployment, RunnerDeployment)  # called from sync code: not a coroutine
    ident: uuid.UUID = run(deployment.aapply())
    yield ident
    run(_cancel_all(ident))


async def _cancel_all(deployment: uuid.UUID) -> None:
    """Leave no Scheduled run behind for a runner another test might start."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    async with get_client() as client:
        for flow_run in await _runs(client, deployment):
            if flow_run.state is not None and not flow_run.state.is_final():
                await client.set_flow_run_state(flow_run.id, Cancelled(), force=True)


async def _runs(client: Any, deployment: uuid.UUID, **parameters: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    found = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment]))
    )
    return [r for r in found if all(r.parameters.get(k) == v for k, v in parameters.items())]


async def runs_of(deployment: uuid.UUID, **parameters: str) -> list[Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await _runs(client, deployment, **parameters)


def request_for(service: str, environment: str, detected_at: datetime | None = None) -> RollbackRequest:
    return RollbackRequest(
        service,
        environment,
        "HighErrorRate: 5xx above 5%",
        detected_at or datetime(2026, 8, 20, 10, 12, 30, 123000, tzinfo=UTC),
        "http://127.0.0.1:9090/graph?g0.expr=errors",
        "3f40106c17c8ba42",
    )


def test_concurrent_launches_create_one_run_per_target(deployment_id: uuid.UUID) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    launcher = PrefectLauncher(DEPLOYMENT)

    async def scenario() -> tuple[list[Launch], Launch]:
        same = await asyncio.gather(*(launcher.launch(request_for(service, "production")) for _ in range(20)))
        other = await launcher.launch(request_for(service, "staging"))
        return same, other

    launches, other = run(scenario())

    production = run(runs_of(deployment_id, service=service, environment="production"))
    assert len(production) == 1
    assert {launch.run_id for launch in launches} == {str(production[0].id)}
    assert [launch.created for launch in launches].count(True) == 1
    assert {launch.state for launch in launches} == {"SCHEDULED"}
    flow_run = production[0]
    # A person's fields only: the flow knows an alert's run by the alert in its context, not by a claim.
    assert flow_run.parameters == {
        "service": service,
        "environment": "production",
        "reason": "HighErrorRate: 5xx above 5%",
        "incident": "http://127.0.0.1:9090/graph?g0.expr=errors",
    }
    assert not {"trigger", "alert", "detected_at"} & set(flow_run.parameters)
    assert set(flow_run.tags) == {"alert", service, "production"}
    assert flow_run.idempotency_key == idempotency_key(request_for(service, "production"))
    alert = from_run_context(flow_run.context)
    assert alert is not None and alert == request_for(service, "production").alert_context()
    assert alert.starts_at == datetime(2026, 8, 20, 10, 12, 30, 123000, tzinfo=UTC)
    assert (alert.source, alert.fingerprints, alert.link) == (
        "alertmanager",
        ("3f40106c17c8ba42",),
        "http://127.0.0.1:9090/graph?g0.expr=errors",
    )

    staging = run(runs_of(deployment_id, service=service, environment="staging"))
    assert other.created and [str(r.id) for r in staging] == [other.run_id]


class _LosesFirstCreateAnswer(httpx.AsyncBaseTransport):
    """Lets every request reach the Prefect server, but loses the answer to the first run it creates."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.lost: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.url.path.endswith("/create_flow_run") and not self.lost:
            await response.aread()  # the server has acted
            self.lost.append(request.url.path)
            raise httpx.ReadError("connection lost before the answer", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_a_run_created_whose_answer_was_lost_is_still_handed_over_once(deployment_id: uuid.UUID) -> None:
    """`runbook serve` creates alert runs PENDING for itself: one whose creation answer was lost must not wait
    forever. The next attempt finds it (still PENDING, this launcher's mark) and hands it over, without a second run."""
    service = f"svc-{uuid.uuid4().hex[:8]}"
    transport, handed = _LosesFirstCreateAnswer(), []
    launcher = PrefectLauncher(DEPLOYMENT, hand_to=handed.append, transport=transport)

    launch = run(launcher.launch(request_for(service, "production")))

    assert transport.lost, "the create's answer was not lost: the test proves nothing"
    [created] = run(runs_of(deployment_id, service=service))
    assert launch.run_id == str(created.id) and launch.state == "PENDING"
    assert [r.id for r in handed] == [created.id]
    # Another launcher (another replica) finds it active, but it is not its own to run.
    other, seen = [], PrefectLauncher(DEPLOYMENT, hand_to=lambda r: other.append(r))
    assert run(seen.launch(request_for(service, "production"))).run_id == launch.run_id and other == []


def test_an_incident_created_whose_answer_was_lost_is_found_and_handed_over_once(prefect_server: None) -> None:
    """The same for an alert group naming several services: one incident run, handed over once, found again."""
    from prefect.client.orchestration import get_client

    from flows.incident import incident
    from runbook.alerts.launcher import IncidentLauncher, IncidentRequest

    deployment = run(incident.to_deployment(name="alerts-test").aapply())  # type: ignore[union-attr]
    services = [f"svc-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    request = IncidentRequest(tuple(request_for(service, "production") for service in services))
    transport, handed = _LosesFirstCreateAnswer(), []
    launcher = IncidentLauncher("incident/alerts-test", hand_to=handed.append, transport=transport)

    launch = run(launcher.launch_incident(request))
    repeat = run(IncidentLauncher("incident/alerts-test").launch_incident(request))  # another replica

    assert transport.lost, "the create's answer was not lost: the test proves nothing"

    async def created() -> list[Any]:
        async with get_client() as client:
            runs = await _runs(client, deployment)
            return [r for r in runs if [s["service"] for s in r.parameters["services"]] == services]

    [made] = run(created())
    assert launch.run_id == str(made.id) and launch.state == "PENDING" and [r.id for r in handed] == [made.id]
    assert (repeat.run_id, repeat.created) == (launch.run_id, False)


def test_ended_rollback_is_not_repeated_but_a_new_incident_starts_one(deployment_id: uuid.UUID) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    service = f"svc-{uuid.uuid4().hex[:8]}"
    launcher = PrefectLauncher(DEPLOYMENT)
    first = run(launcher.launch(request_for(service, "production")))

    async def complete() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(uuid.UUID(first.run_id), Completed(), force=True)

    run(complete())
    repeat = run(launcher.launch(request_for(service, "production")))
    later = datetime(2026, 8, 20, 11, 0, tzinfo=UTC)
    new_incident = run(launcher.launch(request_for(service, "production", later)))

    assert first.created and first.state == "SCHEDULED"
    assert (repeat.run_id, repeat.created, repeat.state, repeat.active) == (first.run_id, False, "COMPLETED", False)
    assert new_incident.created and new_incident.run_id != first.run_id
    assert len(run(runs_of(deployment_id, service=service))) == 2


def test_missing_deployment_is_a_launch_error(prefect_server: None) -> None:
    launcher = PrefectLauncher("rollback/does-not-exist")

    with pytest.raises(LaunchError, match="deployment 'rollback/does-not-exist' does not exist"):
        run(launcher.launch(request_for("shop", "production")))


def test_prefect_api_down_is_503() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # bound, never listening: connections are refused
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed}/api"}):
            app = create_app(CONFIG, PrefectLauncher(DEPLOYMENT, timeout_seconds=10), token=TOKEN)
            started = time.monotonic()
            response = post(app, "/alerts/alertmanager", load_fixture("alerts", "alertmanager-firing"))
            elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["error"].startswith("cannot start the rollback of checkout/production: the Prefect API")
    assert elapsed < 10


def test_alertmanager_to_prefect_end_to_end(deployment_id: uuid.UUID) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    config = make_config()
    config = config.model_copy(update={"services": {service: config.services["checkout"]}})
    app = create_app(config, PrefectLauncher(DEPLOYMENT), token=TOKEN)

    with Served(app) as served, alertmanager_for(served) as alertmanager:
        alertmanager.post_alerts(storm(service, "production", 50))
        wait_for(lambda: len(fingerprints_seen(served)) == 50, what="all 50 alerts to reach the app")

    assert {seen.status for seen in served.requests()} == {200}
    flow_runs = run(runs_of(deployment_id, service=service))
    assert len(flow_runs) == 1
    answers = [a for seen in served.requests() for a in seen.answer["alerts"]]
    assert {a["run_id"] for a in answers} == {str(flow_runs[0].id)}
    assert flow_runs[0].parameters["reason"] == f"HighErrorRate: {service} 5xx ratio above 5%"
    alert = from_run_context(flow_runs[0].context)
    assert alert is not None and alert.name == "HighErrorRate" and alert.labels["service"] == service
    assert alert.group_key == served.requests()[0].body["groupKey"]
    assert set(alert.fingerprints) <= fingerprints_seen(served) and alert.fingerprints


def test_a_group_of_600_alerts_from_alertmanager_starts_one_run(
    deployment_id: uuid.UUID, record_property: Callable[[str, object], None]
) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    config = make_config()
    config = config.model_copy(update={"services": {service: config.services["checkout"]}})
    app = create_app(config, PrefectLauncher(DEPLOYMENT), token=TOKEN)

    # group_wait 1s: the 600 alerts, posted at once, leave Alertmanager as one webhook of the whole group.
    with Served(app) as served, alertmanager_for(served, group_wait="1s") as alertmanager:
        alertmanager.post_alerts(storm(service, "production", 600, kubernetes=True))
        first = wait_for(served.requests, what="the group's webhook")[0]
        attempts, failed = alertmanager.notifications()

    record_property("alertmanager_600_alert_body_bytes", first.size)
    print(f"Alertmanager webhook of 600 alerts: {first.size} bytes")
    assert first.size > 600_000  # what a 256 KiB limit answered 413 to (Alertmanager does not retry a 413)
    assert (first.status, len(first.body["alerts"])) == (200, 600)
    assert attempts >= 1 and failed == 0
    flow_runs = run(runs_of(deployment_id, service=service))
    assert len(flow_runs) == 1
    assert {a["run_id"] for a in first.answer["alerts"]} == {str(flow_runs[0].id)}


def test_a_service_the_deployment_does_not_offer_is_a_503_saying_to_reload(prefect_server: None) -> None:
    from deployments.spec import with_choices
    from flows.rollback import rollback

    # Registered from a configuration without `shop`, as by a `runbook serve` started before it was added.
    older = make_config().model_copy(update={"services": {"checkout": CONFIG.services["checkout"]}})
    run(with_choices(rollback.to_deployment(name="alerts-older-config"), older).aapply())
    app = create_app(CONFIG, PrefectLauncher("rollback/alerts-older-config"), token=TOKEN)
    body = load_fixture("alerts", "alertmanager-firing")
    for alert in body["alerts"]:
        alert["labels"]["service"] = "shop"

    response = post(app, "/alerts/alertmanager", body)

    assert response.status_code == 503
    error = response.json()["error"]
    assert error.startswith(
        "cannot start the rollback of shop/production: the Prefect deployment 'rollback/alerts-older-config' "
        "does not accept service='shop' environment='production' ("
    )
    assert "registered from an older configuration" in error and "kill -HUP" in error
