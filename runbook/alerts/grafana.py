"""Grafana Alerting's webhook contact point (body version 1): its wire models and its alert source."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from runbook.alerts.alertmanager import AlertmanagerAlert, AlertmanagerPayload, normalized
from runbook.alerts.model import Alert
from runbook.alerts.wire import check_bearer_token, validate_payload


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


class GrafanaSource:
    """`POST /alerts/grafana`: Grafana's webhook contact point, with a bearer token (its authorization header)."""

    name = "grafana"
    path = "/alerts/grafana"
    authenticates_body = False

    def parse(self, data: Any) -> list[Alert]:
        payload = validate_payload(GrafanaPayload, data)
        # The panel or dashboard is what a person wants to see; generatorURL is the rule's edit page.
        return [
            normalized(a, a.panel_url or a.dashboard_url or a.generator_url, payload.group_key) for a in payload.alerts
        ]

    def authenticate(self, headers: Mapping[str, str], body: bytes, expected_token: bytes) -> None:
        check_bearer_token(headers, expected_token)
