"""Alertmanager's webhook (`webhook_config`, body version 4): its wire models and its alert source."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runbook.alerts.model import Alert, AlertStatus, label_fingerprint
from runbook.alerts.wire import check_bearer_token, validate_payload


class Wire(BaseModel):
    """Lenient: unknown keys (new Alertmanager or Grafana fields) are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class AlertmanagerAlert(Wire):
    """One alert of an Alertmanager webhook message."""

    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = ""


class AlertmanagerPayload(Wire):
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


def normalized(alert: AlertmanagerAlert, link: str, group_key: str) -> Alert:
    """The `Alert` of one wire alert (of Alertmanager's or Grafana's body), linking to `link`."""
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


class AlertmanagerSource:
    """`POST /alerts/alertmanager`: Alertmanager's webhook, with the bearer token of its `http_config`."""

    name = "alertmanager"
    path = "/alerts/alertmanager"
    authenticates_body = False

    def parse(self, data: Any) -> list[Alert]:
        payload = validate_payload(AlertmanagerPayload, data)
        return [normalized(a, a.generator_url, payload.group_key) for a in payload.alerts]

    def authenticate(self, headers: Mapping[str, str], body: bytes, expected_token: bytes) -> None:
        check_bearer_token(headers, expected_token)
