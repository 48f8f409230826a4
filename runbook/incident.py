"""The alert that started a rollback, as the run carries it: typed from the alert endpoint to the post-mortem.

The alert endpoint puts an `AlertContext` into the flow run's *context* (`FlowRun.context["runbook_alert"]`),
not into its parameters: the Prefect UI's form shows a person's fields only. `from_run_context()` reads it
back; a malformed one is refused before the run does anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runbook.errors import ConfigError

#: The key of the flow run's context under which the alert endpoint puts the alert.
CONTEXT_KEY = "runbook_alert"


class AlertContext(BaseModel):
    """Which alert started the run: for the post-mortem, the Slack thread and the hold (one group, told once)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(max_length=500)
    labels: dict[str, str] = Field(default_factory=dict)
    link: str | None = Field(default=None, max_length=2000)
    starts_at: datetime
    source: str = Field(default="alertmanager", max_length=50)
    #: The alert group (the webhook's `groupKey`) and the fingerprints of its firing alerts for this service.
    group_key: str = Field(default="", max_length=2000)
    fingerprints: tuple[str, ...] = ()

    def line(self) -> str:
        """`name (link)`, for messages."""
        name = self.name or "alert"
        return f"{name} ({self.link})" if self.link else name

    def to_run_context(self) -> dict[str, Any]:
        """What the alert endpoint sends as the flow run's context."""
        return {CONTEXT_KEY: self.model_dump(mode="json")}


def from_run_context(context: Mapping[str, Any] | None) -> AlertContext | None:
    """The alert a flow run carries, or None; ConfigError (saying what is wrong) for a malformed one."""
    data = (context or {}).get(CONTEXT_KEY)
    if data is None:
        return None
    try:
        return AlertContext.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'alert'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"the run's alert context is malformed ({problems})",
            hint="only the alert endpoint sets it; start a rollback by hand with the service and environment instead",
        ) from None


#: The key of an incident run's context under which the alert endpoint puts each service's alert.
MEMBER_ALERTS_KEY = "runbook_member_alerts"


def member_alerts_to_run_context(alerts: Mapping[str, AlertContext]) -> dict[str, Any]:
    """What the alert endpoint adds to an incident run's context: `service/environment` -> that service's alert."""
    return {MEMBER_ALERTS_KEY: {key: alert.model_dump(mode="json") for key, alert in alerts.items()}}


def member_alerts_from_run_context(context: Mapping[str, Any] | None) -> dict[str, AlertContext]:
    """Each service's alert an incident run carries (`service/environment` -> alert); ConfigError when malformed."""
    data = (context or {}).get(MEMBER_ALERTS_KEY) or {}
    if not isinstance(data, Mapping):
        raise ConfigError("the run's alert context is malformed (member alerts: not a mapping)")
    alerts = {}
    for key, value in data.items():
        alert = from_run_context({CONTEXT_KEY: value})
        if alert is not None:
            alerts[str(key)] = alert
    return alerts
