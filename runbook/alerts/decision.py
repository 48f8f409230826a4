"""The decision, pure: one alert and the configuration in, ignore it or roll a service back out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from runbook.alerts.model import Alert
from runbook.config import AlertSettings, RunbookConfig
from runbook.errors import ConfigError

_REASON_MAX = 300


@dataclass(frozen=True)
class Ignore:
    """Start nothing, and why; service and environment as the alert's labels name them, if they do."""

    reason: str
    service: str | None = None
    environment: str | None = None


@dataclass(frozen=True)
class RollbackDecision:
    """Roll `service` back in `environment`."""

    service: str
    environment: str
    reason: str
    detected_at: datetime
    link: str | None


Decision = Ignore | RollbackDecision


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
    return RollbackDecision(service, environment, _reason(alert), alert.starts_at, alert.link)


def _reason(alert: Alert) -> str:
    summary = alert.annotations.get("summary", "").strip()
    name = alert.name or "alert"
    text = f"{name}: {summary}" if summary else name
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"
