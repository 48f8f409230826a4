"""Where alerts come from: the `AlertSource` interface, and `SOURCES`, the ones the endpoint offers a route to.

A source turns a webhook's JSON body into `Alert`s (`parse`, raising `wire.PayloadError` naming the field) and
checks a request's credentials (`authenticate`, raising `wire.Unauthorized`). Alertmanager and Grafana send a
bearer token (`wire.check_bearer_token`); a source whose sender signs the body (a PagerDuty or Datadog webhook's
HMAC) sets `authenticates_body` and checks the signature against the raw body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from runbook.alerts.alertmanager import AlertmanagerSource
from runbook.alerts.grafana import GrafanaSource
from runbook.alerts.model import Alert


class AlertSource(Protocol):
    """One sender of alerts: its route, how to read its body, how to tell it is who it says."""

    @property
    def name(self) -> str:
        """What the endpoint's log lines and the run's alert context call it: `alertmanager`."""
        ...

    @property
    def path(self) -> str:
        """Its route on the alert endpoint: `/alerts/alertmanager`."""
        ...

    @property
    def authenticates_body(self) -> bool:
        """False: `authenticate` looks at the headers only, and is called before the body is read (an unknown
        sender is refused without reading a byte of it). True: it checks a signature of the body, and is called
        with the whole body once read (within the endpoint's size and time limits)."""
        ...

    def parse(self, data: Any) -> list[Alert]:
        """One `Alert` per entry of a decoded JSON body; `wire.PayloadError` naming the field when it is not one."""
        ...

    def authenticate(self, headers: Mapping[str, str], body: bytes, expected_token: bytes) -> None:
        """Nothing when the request carries `expected_token` (the `alerts.token` secret); `wire.Unauthorized` else.

        `body` is empty for a source that does not `authenticates_body`.
        """
        ...


#: The alert sources by name: the alert endpoint serves one route for each.
SOURCES: dict[str, AlertSource] = {
    "alertmanager": AlertmanagerSource(),
    "grafana": GrafanaSource(),
}
