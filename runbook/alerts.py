"""The alert endpoint: Alertmanager and Grafana webhooks in, at most one rollback per service and environment out.

    POST /alerts/alertmanager   Alertmanager `webhook_config` body (version 4)
    POST /alerts/grafana        Grafana Alerting webhook contact point body (version 1)
    GET  /healthz               liveness; no token

A POST goes: bearer token (constant-time compare) -> body size -> JSON -> payload model -> one `Alert` per
entry -> `decide()` (pure: resolved, not eligible, unknown service or environment are ignored) -> one
`RunLauncher.launch()` per (service, environment) in the payload -> one decision per alert in the answer.

Status codes: 401 no or wrong token, 413 body too large (`alerts.max_body_bytes`, 16 MiB: about 14,000 alerts
with a dozen labels and four annotations each), 408 a body that did not arrive within `BODY_SECONDS`, 400 not
JSON, 422 not the expected shape (naming the field), 503 the launcher (the Prefect API) failed, is busy past
`LAUNCH_SECONDS`, or its deployment refuses the service (registered from an older configuration) — the only 5xx,
so Alertmanager retries it and only it. Alerts that start nothing are logged once per webhook with the reasons.

`PrefectLauncher` keeps one rollback per (service, environment): an active run of the deployment with the same
`service` and `environment` parameters is returned instead of a new one. Its idempotency key (the alert group's
`groupKey` and each firing alert's fingerprint and start, hashed) makes a repeat notification of the same
alerts return the run they started rather than start another; two incidents in the same minute differ.

One incident, at most one automatic rollback (runbook/hold.py): after an automatic rollback, alerts that
started before it ended or within `alerts.hold_minutes` after are held. The flow decides (and tells the
rollback's Slack thread, once per alert group); the launcher answers `held` without creating a run for a group
that was already told.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from runbook import hold
from runbook.config import AlertSettings, RunbookConfig, check_alert_token
from runbook.errors import ConfigError, LaunchError

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

logger = logging.getLogger("runbook.alerts")

AlertStatus = Literal["firing", "resolved"]
Outcome = Literal["started", "already-running", "held", "ignored"]

#: Prefect state types of a run that is still going (AwaitingRetry/Late are SCHEDULED, Retrying is RUNNING).
ACTIVE_STATE_TYPES: tuple[str, ...] = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
_REASON_MAX = 300
#: How long a launch may take (the Prefect API busy included) before the answer is a 503 the sender retries.
LAUNCH_SECONDS = 8.0
#: Launches talking to the Prefect API at once (more only queue up for SQLite's writer lock).
LAUNCH_CONCURRENCY = 4
#: How long reading a request body may take before the answer is a 408 (a stalled sender holds nothing longer).
BODY_SECONDS = 20.0


# --- payloads ---------------------------------------------------------------------------------------------


class _Wire(BaseModel):
    """Lenient: unknown keys (new Alertmanager or Grafana fields) are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class AlertmanagerAlert(_Wire):
    """One alert of an Alertmanager webhook message."""

    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = ""


class AlertmanagerPayload(_Wire):
    """Alertmanager's webhook body (`version` "4"); `notification_reason` since v0.32, `routeLabels` since v0.34."""

    version: str = "4"
    status: AlertStatus | None = None
    receiver: str = ""
    group_key: str = Field(default="", alias="groupKey")
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[AlertmanagerAlert]
    notification_reason: str | None = None
    route_labels: dict[str, str] | None = Field(default=None, alias="routeLabels")
    truncated_alerts: int = Field(default=0, alias="truncatedAlerts")

    def to_alerts(self) -> list[Alert]:
        return [_common(a, a.generator_url, self.group_key) for a in self.alerts]


class GrafanaAlert(AlertmanagerAlert):
    """One alert of a Grafana webhook contact point body."""

    silence_url: str | None = Field(default=None, alias="silenceURL")
    dashboard_url: str | None = Field(default=None, alias="dashboardURL")
    panel_url: str | None = Field(default=None, alias="panelURL")
    image_url: str | None = Field(default=None, alias="imageURL")
    values: dict[str, Any] | None = None


class GrafanaPayload(AlertmanagerPayload):
    """Grafana's webhook body (`version` "1"): Alertmanager's envelope plus `orgId`, `title`, `state`, `message`."""

    version: str = "1"
    org_id: int | None = Field(default=None, alias="orgId")
    title: str | None = None
    state: str | None = None
    message: str | None = None
    alerts: list[GrafanaAlert]  # type: ignore[assignment]  # a GrafanaAlert is an AlertmanagerAlert

    def to_alerts(self) -> list[Alert]:
        # The panel or dashboard is what a person wants to see; generatorURL is the rule's edit page.
        return [_common(a, a.panel_url or a.dashboard_url or a.generator_url, self.group_key) for a in self.alerts]


@dataclass(frozen=True)
class Alert:
    """One alert, whoever sent it."""

    name: str
    status: AlertStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    link: str | None
    fingerprint: str
    group_key: str = ""  # the webhook's `groupKey`: which alert group it belongs to


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set (FNV-1a 64 over sorted names and values, 0xff separated)."""
    value = 14695981039346656037
    for name in sorted(labels):
        for part in (name.encode(), b"\xff", labels[name].encode(), b"\xff"):
            for byte in part:
                value = ((value ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def _common(alert: AlertmanagerAlert, link: str, group_key: str) -> Alert:
    return Alert(
        name=alert.labels.get("alertname", ""),
        status=alert.status,
        labels=dict(alert.labels),
        annotations=dict(alert.annotations),
        starts_at=alert.starts_at.astimezone(UTC),
        link=link or None,
        fingerprint=alert.fingerprint or label_fingerprint(alert.labels),
        group_key=group_key,
    )


# --- the decision -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ignore:
    """Start nothing, and why; service and environment as the alert's labels name them, if they do."""

    reason: str
    service: str | None = None
    environment: str | None = None


@dataclass(frozen=True)
class Rollback:
    """Roll `service` back in `environment`."""

    service: str
    environment: str
    reason: str
    detected_at: datetime
    link: str | None


Decision = Ignore | Rollback


def alert_settings(config: RunbookConfig) -> AlertSettings:
    """The `alerts` section, or a ConfigError saying it is missing."""
    if config.alerts is None:
        raise ConfigError(
            "the configuration has no 'alerts' section",
            hint="add alerts: {token: {env: RUNBOOK_ALERT_TOKEN}} (see runbook.example.yaml)",
        )
    return config.alerts


def decide(alert: Alert, config: RunbookConfig) -> Decision:
    """What to do with one alert: ignore it (resolved, not eligible, unknown target) or roll back."""
    settings = alert_settings(config)
    service = alert.labels.get(settings.service_label)
    environment = alert.labels.get(settings.environment_label) or settings.default_environment
    if alert.status == "resolved":
        return Ignore("resolved", service, environment)
    for name, wanted in sorted(settings.match.items()):
        if name not in alert.labels:
            return Ignore(f"not eligible: missing match label {name}={wanted}", service, environment)
        if alert.labels[name] != wanted:
            return Ignore(
                f"not eligible: label {name}={alert.labels[name]!r} does not match {name}={wanted}",
                service,
                environment,
            )
    known = ", ".join(sorted(config.services))
    if not service:
        return Ignore(f"unknown service: the alert has no {settings.service_label!r} label (known: {known})")
    if service not in config.services:
        return Ignore(f"unknown service {service!r} (known: {known})", service, environment)
    if not environment:
        return Ignore(
            f"unknown environment: the alert has no {settings.environment_label!r} label "
            "and alerts.default_environment is not set",
            service,
        )
    environments = config.services[service].environments
    if environment not in environments:
        return Ignore(
            f"unknown environment {environment!r} for service {service!r} (known: {', '.join(sorted(environments))})",
            service,
            environment,
        )
    return Rollback(service, environment, _reason(alert), alert.starts_at, alert.link)


def _reason(alert: Alert) -> str:
    summary = alert.annotations.get("summary", "").strip()
    name = alert.name or "alert"
    text = f"{name}: {summary}" if summary else name
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"


# --- launching --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackRequest:
    """What an alert asks for: a rollback of one service in one environment."""

    service: str
    environment: str
    reason: str
    detected_at: datetime
    link: str | None
    alert_fingerprint: str
    alert_name: str = ""
    alert_labels: tuple[tuple[str, str], ...] = ()
    group_key: str = ""
    #: (fingerprint, start) of each firing alert of the group for this service and environment.
    alerts: tuple[tuple[str, datetime], ...] = ()
    hold_minutes: int = 30

    @property
    def fingerprints(self) -> list[str]:
        return sorted({f for f, _ in self.alerts} or {self.alert_fingerprint})


@dataclass(frozen=True)
class Launch:
    """The run answering a request: new (`created`) or the one already there; `state` is its state type.

    `held` (with the automatic rollback's run as `run_id`, state HELD): no run, and why.
    """

    run_id: str
    created: bool
    state: str
    held: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATE_TYPES


class RunLauncher(Protocol):
    """Starts a rollback run unless one is already active for the service and environment."""

    async def launch(self, request: RollbackRequest) -> Launch: ...


def idempotency_key(request: RollbackRequest) -> str:
    """`alert:<service>:<environment>:<digest>` of the group key and each firing alert's fingerprint and start.

    Stable across repeat notifications of the same alerts; new for another group, another set of alerts, or
    the same alert firing again later (a fingerprint is only its label set; Prefect keeps keys forever).
    """
    alerts = request.alerts or ((request.alert_fingerprint, request.detected_at),)
    parts = sorted(f"{fingerprint}@{start.astimezone(UTC).isoformat()}" for fingerprint, start in alerts)
    digest = hashlib.sha256("\n".join([request.group_key, *parts]).encode()).hexdigest()[:24]
    return f"alert:{request.service}:{request.environment}:{digest}"


class PrefectLauncher:
    """Creates runs of the `rollback` deployment through the Prefect API, one active per service and environment.

    Within this process an `asyncio.Lock` per (service, environment) serialises check-then-create; across
    processes (two endpoint replicas) the idempotency key makes the same alert group land on the same run.

    Under a storm (20 services alerting at once, Prefect on SQLite busy with the runs already started) the
    launches under way share one API client, read the deployment once, make their reads concurrently (active
    runs, the idempotency key's run, the hold record) and then their one write; at most `concurrency` of them
    talk to the API at a time (more only collide on SQLite's writer lock: a 503 each, after about 2 s). A 503
    is retried after 0.1 s, doubling up to 1 s, instead of Prefect's 2 s, 4 s... The whole launch is bounded by
    `timeout_seconds`: past it, the answer is a 503 saying the API is busy, which Alertmanager retries (and
    the idempotency key makes the retry find a run the late attempt may have created).
    """

    def __init__(
        self,
        deployment_name: str = "rollback/rollback",
        *,
        timeout_seconds: float = LAUNCH_SECONDS,
        concurrency: int = LAUNCH_CONCURRENCY,
    ) -> None:
        self.deployment_name = deployment_name
        self.timeout_seconds = timeout_seconds
        self.concurrency = concurrency
        self._deployment_id: UUID | None = None
        self._on: _LoopState | None = None

    def __repr__(self) -> str:
        return f"PrefectLauncher(deployment_name={self.deployment_name!r})"

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._on is None or self._on.loop is not loop:  # locks and clients belong to one event loop
            self._on = _LoopState(loop, asyncio.Semaphore(self.concurrency), asyncio.Lock())
        return self._on

    @asynccontextmanager
    async def _client(self, state: _LoopState) -> AsyncIterator[PrefectClient]:
        """One API client shared by the launches under way (one connection pool), closed after the last."""
        async with state.opening:
            if state.no_retries is None:
                import prefect.context
                from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

                # Prefect's client waits 2 s, then 4 s... after each 503: `_until_answered` retries sooner.
                settings = prefect.context.get_settings_context()
                quick = settings.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
                state.no_retries = (settings.profile, quick)
            if state.client is None:
                from prefect.client.orchestration import get_client

                client = get_client()
                await client.__aenter__()
                state.client = client
            state.users += 1
            shared = state.client
        try:
            yield shared
        finally:
            state.users -= 1
            if state.users == 0 and state.client is shared:
                state.client = None
                await shared.__aexit__(None, None, None)

    async def launch(self, request: RollbackRequest) -> Launch:
        import httpx
        from prefect.exceptions import ObjectNotFound, PrefectException

        state = self._state()
        try:
            async with asyncio.timeout(self.timeout_seconds), state.lock(request.service, request.environment):
                return await self._until_answered(state, request)
        except ObjectNotFound:
            self._deployment_id = None
            raise LaunchError(
                f"the Prefect deployment {self.deployment_name!r} does not exist",
                hint="start `runbook serve` (it deploys the rollback flow) or check the Prefect API URL",
            ) from None
        except TimeoutError:
            raise LaunchError(
                f"the Prefect API is busy: no answer within {self.timeout_seconds:g} s",
                hint="the sender retries this 503; if it lasts, check the Prefect server (on SQLite, a storm of "
                "runs keeps it busy: PostgreSQL for a shared server) and PREFECT_API_URL",
            ) from None
        except (httpx.HTTPError, PrefectException, OSError) as exc:
            raise LaunchError(
                f"the Prefect API failed: {type(exc).__name__}: {exc}",
                hint="check the Prefect server (prefect server start) and PREFECT_API_URL",
            ) from None

    async def _until_answered(self, state: _LoopState, request: RollbackRequest) -> Launch:
        """`_launch`, again after a short pause (0.1 s, doubling up to 1 s) while the API answers it is busy.

        SQLite's writer lock ("database is locked") comes back as a 503; every call of a launch is safe to repeat
        (reads, and a create carrying the idempotency key). The launch's timeout bounds the whole.
        """
        import prefect.context
        from prefect.exceptions import PrefectHTTPStatusError

        pause = 0.1
        async with self._client(state) as client:
            while True:
                async with state.gate:
                    profile, settings = state.no_retries
                    try:
                        with prefect.context.SettingsContext(profile=profile, settings=settings):
                            return await self._launch(client, request)
                    except PrefectHTTPStatusError as exc:
                        if exc.response.status_code not in (429, 502, 503):
                            raise
                        logger.debug("Prefect API busy (%s): retrying in %.1f s", exc.response.status_code, pause)
                await asyncio.sleep(pause)  # not holding a place at the gate
                pause = min(pause * 2, 1.0)

    async def _launch(self, client: PrefectClient, request: RollbackRequest) -> Launch:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterDeploymentId,
            FlowRunFilterIdempotencyKey,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort
        from prefect.exceptions import PrefectHTTPStatusError

        deployment_id = await self._resolve_deployment(client)
        key = idempotency_key(request)
        # Three reads at once (one round trip's wait; reads do not take SQLite's writer lock), then one write.
        active, earlier, held = await asyncio.gather(
            client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType(t) for t in ACTIVE_STATE_TYPES])
                    ),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            ),
            client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                    idempotency_key=FlowRunFilterIdempotencyKey(any_=[key]),
                ),
                limit=1,
            ),
            _held_and_told(client, request),
        )
        for run in active:
            given = run.parameters or {}
            if (given.get("service"), given.get("environment")) == (request.service, request.environment):
                return _launch_of(run, created=False)
        if earlier:  # these alerts' rollback already ran and ended: Prefect would hand it back anyway
            return _launch_of(earlier[0], created=False)
        if held is not None:
            return held

        parameters: dict[str, Any] = {
            "service": request.service,
            "environment": request.environment,
            "reason": request.reason,
            "incident": request.link,
            "detected_at": request.detected_at.isoformat(),
            # For the post-mortem: which alert, with its labels and link (the flow's trigger is then `alert`).
            "alert": {
                "name": request.alert_name,
                "labels": dict(request.alert_labels),
                "link": request.link,
                "starts_at": request.detected_at.isoformat(),
                "fingerprint": request.alert_fingerprint,
                # For the hold: which alert group, to tell its thread once.
                "group": request.group_key,
                "fingerprints": request.fingerprints,
            },
        }
        try:
            run = await client.create_flow_run_from_deployment(
                deployment_id,
                parameters=parameters,
                tags=["alert", request.service, request.environment],
                idempotency_key=key,
            )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 409:
                raise
            raise _refused_by_deployment(self.deployment_name, request, exc.response) from None
        logger.info(
            "created rollback run %s for %s/%s (alert %s)",
            run.id,
            request.service,
            request.environment,
            request.alert_fingerprint,
        )
        return _launch_of(run, created=True)

    async def _resolve_deployment(self, client: PrefectClient) -> UUID:
        if self._deployment_id is None:
            async with self._state().opening:  # read once, not once per launch waiting for it
                if self._deployment_id is None:
                    self._deployment_id = (await client.read_deployment_by_name(self.deployment_name)).id
        return self._deployment_id


@dataclass
class _LoopState:
    """What a launcher keeps per event loop: the gate, the per-target locks, the shared API client."""

    loop: asyncio.AbstractEventLoop
    gate: asyncio.Semaphore
    opening: asyncio.Lock
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    client: PrefectClient | None = None
    users: int = 0
    no_retries: Any = None  # (profile, settings) of Prefect's settings context, with its client's retries off

    def lock(self, service: str, environment: str) -> asyncio.Lock:
        return self.locks.setdefault((service, environment), asyncio.Lock())


def _refused_by_deployment(deployment: str, request: RollbackRequest, response: Any) -> LaunchError:
    """Prefect's 409: the deployment's parameter schema (its service and environment choices) refuses these."""
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        detail = response.text
    return LaunchError(
        f"the Prefect deployment {deployment!r} does not accept service={request.service!r} "
        f"environment={request.environment!r} ({detail[:300] or 'HTTP 409'}): it was registered from an older "
        "configuration",
        hint="reload `runbook serve` (kill -HUP its process: it re-reads the configuration and registers the "
        "deployments again) or restart it; the sender retries this 503 meanwhile",
    )


async def _held_and_told(client: PrefectClient, request: RollbackRequest) -> Launch | None:
    """A held alert whose group was already told in the rollback's thread: nothing to start, nothing to post.

    A held group not told yet gets a run all the same: the flow holds it and posts the reply (it is the safety
    net: a second endpoint or an older one without this check changes nothing).
    """
    last = await hold.aread_last(client, request.service, request.environment)
    reason = hold.hold_reason(last, request.detected_at, datetime.now(UTC), timedelta(minutes=request.hold_minutes))
    if last is None or reason is None:
        return None
    if hold.group_id(request.group_key, request.fingerprints) not in last.held_groups:
        return None
    why = f"held: {reason}. No further automatic rollback: a person decides (already said in its Slack thread)"
    return Launch(last.flow_run_id, False, "HELD", held=why)


def _launch_of(run: FlowRun, *, created: bool) -> Launch:
    state = run.state_type.value if run.state_type is not None else "UNKNOWN"
    # A repeat of alerts whose run the flow held: say so, not "already ran".
    held = (run.state.message or "held") if run.state is not None and run.state.name == "Held" else None
    return Launch(str(run.id), created, state, held=held)


# --- the app ----------------------------------------------------------------------------------------------


class AlertOutcome(BaseModel):
    """What became of one alert."""

    fingerprint: str
    decision: Outcome
    reason: str
    run_id: str | None = None
    service: str | None = None
    environment: str | None = None


class AlertsAnswer(BaseModel):
    """The answer to a webhook: one outcome per alert, in the payload's order."""

    alerts: list[AlertOutcome]


class _Refused(Exception):
    """A request answered with a 4xx/503 before or instead of any decision."""

    def __init__(self, status: int, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.error, self.extra = status, error, extra

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        if self.status == 408:  # the rest of a late body is not awaited: the connection ends with the answer
            headers = {"Connection": "close"}
        return JSONResponse({"error": self.error, **self.extra}, status_code=self.status, headers=headers)


@dataclass(frozen=True)
class _Current:
    """What the endpoint answers with: the configuration, the token it wants, the body limit."""

    config: RunbookConfig
    token: bytes
    limit: int


def _current(config: RunbookConfig, token: str | SecretStr | None) -> _Current:
    settings = alert_settings(config)
    secret = token if token is not None else settings.token.reveal()
    expected = (secret.get_secret_value() if isinstance(secret, SecretStr) else secret).encode()
    check_alert_token(expected.decode(), settings.token.describe())  # empty or short enough to guess: refused
    return _Current(config, expected, settings.max_body_bytes)


def create_app(
    config: RunbookConfig,
    launcher: RunLauncher,
    *,
    token: str | SecretStr | None = None,
    body_seconds: float = BODY_SECONDS,
) -> FastAPI:
    """The alert endpoint as an ASGI app; `token` defaults to the secret `alerts.token` refers to.

    A body that takes longer than `body_seconds` to arrive is answered 408 and its connection closed.
    `reconfigure(app, config)` swaps the configuration for the next requests (`runbook serve` on SIGHUP).
    """
    app = FastAPI(title="runbook alerts", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runbook_token = token
    app.state.runbook = _current(config, token)

    async def handle(request: Request, source: str, parse: Callable[[Any], list[Alert]]) -> Response:
        current: _Current = app.state.runbook
        try:
            _authorize(request.headers.get("authorization"), current.token)
            try:
                async with asyncio.timeout(body_seconds):
                    body = await _read_body(request, current.limit)
            except TimeoutError:
                raise _Refused(408, f"the body did not arrive within {body_seconds:g} s") from None
            # A group of thousands of alerts takes a few hundred ms to parse: not on the event loop.
            alerts = await asyncio.to_thread(lambda: parse(_decode(body)))
            answer = await _answer(alerts, current.config, launcher, source)
        except _Refused as refused:
            client = request.client.host if request.client else "?"
            level = logging.ERROR if refused.status >= 500 else logging.WARNING
            logger.log(level, "%s webhook from %s refused: %s %s", source, client, refused.status, refused.error)
            return refused.response()
        return JSONResponse(answer.model_dump(mode="json"))

    @app.post("/alerts/alertmanager")
    async def alertmanager(request: Request) -> Response:
        return await handle(request, "alertmanager", lambda data: _validate(AlertmanagerPayload, data).to_alerts())

    @app.post("/alerts/grafana")
    async def grafana(request: Request) -> Response:
        return await handle(request, "grafana", lambda data: _validate(GrafanaPayload, data).to_alerts())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def reconfigure(app: FastAPI, config: RunbookConfig) -> None:
    """Answer the next requests with `config` (services, environments, labels, token, body limit).

    A ConfigError (no `alerts` section, a token that cannot be read or is too short) leaves the app as it was.
    """
    app.state.runbook = _current(config, app.state.runbook_token)


def _authorize(header: str | None, expected: bytes) -> None:
    if not header:
        raise _Refused(401, "missing bearer token (Authorization: Bearer <token>)")
    scheme, _, value = header.partition(" ")
    # compare_digest on bytes: on str it raises for non-ASCII input instead of answering False.
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
        raise _Refused(401, "invalid bearer token")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise _Refused(413, f"body of {declared} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():  # chunked bodies have no Content-Length: count what arrives
        body += chunk
        if len(body) > limit:
            raise _Refused(413, f"body is over the limit of {limit} bytes")
    return bytes(body)


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _Refused(400, f"body is not valid JSON: {exc}") from None


def _validate(model: type[AlertmanagerPayload], data: Any) -> AlertmanagerPayload:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or '(body)'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        ]
        raise _Refused(422, f"invalid payload: {problems[0]}", problems=problems[:20]) from None


async def _answer(alerts: list[Alert], config: RunbookConfig, launcher: RunLauncher, source: str) -> AlertsAnswer:
    decisions = [decide(alert, config) for alert in alerts]
    outcomes: list[AlertOutcome | None] = [None] * len(alerts)
    targets: dict[tuple[str, str], dict[int, Rollback]] = {}
    for index, (alert, decision) in enumerate(zip(alerts, decisions, strict=True)):
        if isinstance(decision, Rollback):
            targets.setdefault((decision.service, decision.environment), {})[index] = decision
        else:
            outcomes[index] = AlertOutcome(
                fingerprint=alert.fingerprint,
                decision="ignored",
                reason=decision.reason,
                service=decision.service,
                environment=decision.environment,
            )
    hold_minutes = alert_settings(config).hold_minutes
    for (service, environment), rollbacks in targets.items():
        # The group's earliest alert: its start is when the incident was detected.
        first = min(rollbacks, key=lambda i: (alerts[i].starts_at, i))
        chosen = rollbacks[first]
        request = RollbackRequest(
            service,
            environment,
            chosen.reason,
            chosen.detected_at,
            chosen.link,
            alerts[first].fingerprint,
            alerts[first].name,
            tuple(sorted(alerts[first].labels.items())),
            group_key=alerts[first].group_key,
            alerts=tuple(sorted({(alerts[i].fingerprint, alerts[i].starts_at) for i in rollbacks})),
            hold_minutes=hold_minutes,
        )
        try:
            launch = await launcher.launch(request)
        except Exception as exc:  # whatever the launcher raises, the answer is 503 so the sender retries
            raise _Refused(503, f"cannot start the rollback of {service}/{environment}: {exc}") from None
        for index in rollbacks:
            outcomes[index] = _outcome(alerts[index], service, environment, launch, starter=index == first)
        if launch.held:
            continue  # said below, with the ignored ones
        logger.info(
            "%s webhook: %s/%s run %s (%s, %s) for %d alert(s)",
            source,
            service,
            environment,
            launch.run_id,
            "created" if launch.created else "existing",
            launch.state,
            len(rollbacks),
        )
    answered = [o for o in outcomes if o is not None]
    _log_unstarted(source, alerts, answered)
    return AlertsAnswer(alerts=answered)


def _log_unstarted(source: str, alerts: list[Alert], outcomes: list[AlertOutcome]) -> None:
    """One line per webhook (one alert group) for its alerts that started nothing, with each reason and count.

    At WARNING, so that `runbook serve`'s output says why an alert rolled nothing back (wrong labels, unknown
    service, held, already ran); at INFO when they are all merely resolved.
    """
    unstarted = Counter(o.reason for o in outcomes if o.decision in ("ignored", "held"))
    if not unstarted:
        return
    level = logging.INFO if set(unstarted) == {"resolved"} else logging.WARNING
    group = next((a.group_key for a in alerts if a.group_key), "") or "(no groupKey)"
    reasons = "; ".join(f"{reason} ({count} alert(s))" for reason, count in sorted(unstarted.items()))
    logger.log(
        level,
        "%s webhook, alert group %s: %d of %d alert(s) started nothing: %s",
        source,
        group,
        sum(unstarted.values()),
        len(outcomes),
        reasons,
    )


def _outcome(alert: Alert, service: str, environment: str, launch: Launch, *, starter: bool) -> AlertOutcome:
    if launch.held:
        decision: Outcome = "held"
        reason = launch.held
    elif launch.created and starter:
        decision = "started"
        reason = f"rollback of {service}/{environment} started"
    elif launch.created or launch.active:
        decision = "already-running"
        reason = f"a rollback of {service}/{environment} is already {launch.state.lower()}: one at a time"
    else:
        decision = "ignored"
        reason = (
            f"this alert's rollback already ran (run {launch.run_id} ended {launch.state}); "
            "another alert group or new alerts may start one, unless an automatic rollback holds them"
        )
    return AlertOutcome(
        fingerprint=alert.fingerprint,
        decision=decision,
        reason=reason,
        run_id=launch.run_id,
        service=service,
        environment=environment,
    )
