"""The alert endpoint: alert webhooks in (one route per source), at most one rollback per service and environment out.

    POST /alerts/alertmanager   Alertmanager `webhook_config` body (version 4)
    POST /alerts/grafana        Grafana Alerting webhook contact point body (version 1)
    GET  /healthz               liveness; no token

The routes are those of `runbook.alerts.source.SOURCES`. A POST goes: the source's credentials (a bearer token,
constant-time compare) -> body size -> JSON -> the source's payload model -> one `Alert` per entry -> `decide()`
(pure: resolved, not eligible, unknown service or environment are ignored) -> one `RunLauncher.launch()` per
(service, environment) in the payload, or, when the payload (one alert group) names several services and an
incident launcher is given, one `IncidentStarter.launch_incident()` for them all (flows/incident.py: one
incident, one Slack thread) -> one decision per alert in the answer. (A source that signs its body is
authenticated once the body is read.)

Status codes: 401 no or wrong token, 413 body too large (`alerts.max_body_bytes`, 16 MiB: about 14,000 alerts
with a dozen labels and four annotations each), 408 a body that did not arrive within `BODY_SECONDS`, 400 not
JSON, 422 not the expected shape (naming the field), 503 the launcher (the Prefect API) failed, is busy past
`LAUNCH_SECONDS`, or its deployment refuses the service (registered from an older configuration) — the only 5xx,
so Alertmanager retries it and only it. Alerts that start nothing are logged once per webhook with the reasons.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, SecretStr

from runbook.alerts.decision import RollbackDecision, alert_settings, decide
from runbook.alerts.launcher import IncidentRequest, IncidentStarter, Launch, RollbackRequest, RunLauncher
from runbook.alerts.model import Alert
from runbook.alerts.source import SOURCES, AlertSource
from runbook.alerts.wire import PayloadError, Unauthorized
from runbook.config import RunbookConfig, check_alert_token

logger = logging.getLogger("runbook.alerts")

Outcome = Literal["started", "already-running", "held", "ignored"]

#: How long reading a request body may take before the answer is a 408 (a stalled sender holds nothing longer).
BODY_SECONDS = 20.0


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
    incidents: IncidentStarter | None = None,
) -> FastAPI:
    """The alert endpoint as an ASGI app; `token` defaults to the secret `alerts.token` refers to.

    A body that takes longer than `body_seconds` to arrive is answered 408 and its connection closed.
    `incidents`: starts one incident for a payload naming several services (without it: one rollback each).
    `reconfigure(app, config)` swaps the configuration for the next requests (`runbook serve` on SIGHUP).
    """
    app = FastAPI(title="runbook alerts", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runbook_token = token
    app.state.runbook = _current(config, token)

    def route(source: AlertSource) -> Callable[[Request], Awaitable[Response]]:
        async def receive(request: Request) -> Response:
            return await _handle(app, request, source, _Launchers(launcher, incidents), body_seconds)

        receive.__name__ = source.name
        return receive

    for source in SOURCES.values():
        app.add_api_route(source.path, route(source), methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def reconfigure(app: FastAPI, config: RunbookConfig) -> None:
    """Answer the next requests with `config` (services, environments, labels, token, body limit).

    A ConfigError (no `alerts` section, a token that cannot be read or is too short) leaves the app as it was.
    """
    app.state.runbook = _current(config, app.state.runbook_token)


@dataclass(frozen=True)
class _Launchers:
    """How the endpoint starts runs: a rollback per service, or one incident for several."""

    rollback: RunLauncher
    incident: IncidentStarter | None


async def _handle(
    app: FastAPI, request: Request, source: AlertSource, launcher: _Launchers, body_seconds: float
) -> Response:
    current: _Current = app.state.runbook
    try:
        if not source.authenticates_body:  # an unknown sender is refused before a byte of its body is read
            _authorize(source, request, b"", current.token)
        try:
            async with asyncio.timeout(body_seconds):
                body = await _read_body(request, current.limit)
        except TimeoutError:
            raise _Refused(408, f"the body did not arrive within {body_seconds:g} s") from None
        if source.authenticates_body:
            _authorize(source, request, body, current.token)
        # A group of thousands of alerts takes a few hundred ms to parse: not on the event loop.
        alerts = await asyncio.to_thread(_parse, source, body)
        answer = await _answer(alerts, current.config, launcher, source.name)
    except _Refused as refused:
        client = request.client.host if request.client else "?"
        level = logging.ERROR if refused.status >= 500 else logging.WARNING
        logger.log(level, "%s webhook from %s refused: %s %s", source.name, client, refused.status, refused.error)
        return refused.response()
    return JSONResponse(answer.model_dump(mode="json"))


def _authorize(source: AlertSource, request: Request, body: bytes, expected: bytes) -> None:
    try:
        source.authenticate(request.headers, body, expected)
    except Unauthorized as exc:
        raise _Refused(401, str(exc)) from None


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


def _parse(source: AlertSource, body: bytes) -> list[Alert]:
    data = _decode(body)
    try:
        return source.parse(data)
    except PayloadError as exc:
        raise _Refused(422, str(exc), problems=exc.problems) from None


async def _answer(alerts: list[Alert], config: RunbookConfig, launcher: _Launchers, source: str) -> AlertsAnswer:
    decisions = [decide(alert, config) for alert in alerts]
    outcomes: list[AlertOutcome | None] = [None] * len(alerts)
    targets: dict[tuple[str, str], dict[int, RollbackDecision]] = {}
    for index, (alert, decision) in enumerate(zip(alerts, decisions, strict=True)):
        if isinstance(decision, RollbackDecision):
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
    requests = {target: _request(alerts, rollbacks, hold_minutes, source) for target, rollbacks in targets.items()}
    launches = await _launch(requests, launcher)
    for (service, environment), rollbacks in targets.items():
        launch = launches[service, environment]
        first = _earliest(alerts, rollbacks)
        for index in rollbacks:
            outcomes[index] = _outcome(alerts[index], service, environment, launch, starter=index == first)
        if not launch.held:  # held: said below, with the ignored ones
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


async def _launch(
    requests: dict[tuple[str, str], RollbackRequest], launcher: _Launchers
) -> dict[tuple[str, str], Launch]:
    """One run per (service, environment), or one incident run for them all; a 503 when a launch fails."""
    if launcher.incident is not None and len(requests) > 1:  # one alert group, several services: one incident
        by_start = sorted(requests.values(), key=lambda r: (r.detected_at, r.service, r.environment))
        try:
            launch = await launcher.incident.launch_incident(IncidentRequest(tuple(by_start)))
        except Exception as exc:  # whatever the launcher raises, the answer is 503 so the sender retries
            keys = ", ".join(f"{s}/{e}" for s, e in requests)
            raise _Refused(503, f"cannot start the incident of {keys}: {exc}") from None
        return dict.fromkeys(requests, launch)
    launches = {}
    for (service, environment), request in requests.items():
        try:
            launches[service, environment] = await launcher.rollback.launch(request)
        except Exception as exc:  # whatever the launcher raises, the answer is 503 so the sender retries
            raise _Refused(503, f"cannot start the rollback of {service}/{environment}: {exc}") from None
    return launches


def _earliest(alerts: list[Alert], rollbacks: dict[int, RollbackDecision]) -> int:
    """The index of a target's earliest alert: its start is when the incident was detected."""
    return min(rollbacks, key=lambda i: (alerts[i].starts_at, i))


def _request(
    alerts: list[Alert], rollbacks: dict[int, RollbackDecision], hold_minutes: int, source: str
) -> RollbackRequest:
    """What the alerts of one service and environment ask for, described by the earliest one."""
    first = _earliest(alerts, rollbacks)
    chosen = rollbacks[first]
    return RollbackRequest(
        chosen.service,
        chosen.environment,
        chosen.reason,
        chosen.detected_at,
        chosen.link,
        alerts[first].fingerprint,
        alerts[first].name,
        tuple(sorted(alerts[first].labels.items())),
        group_key=alerts[first].group_key,
        alerts=tuple(sorted({(alerts[i].fingerprint, alerts[i].starts_at) for i in rollbacks})),
        hold_minutes=hold_minutes,
        source=source,
    )


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
