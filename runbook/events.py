"""Prefect events of the runbook (`runbook.rollback.started`, `.succeeded`, `.failed`, `.held`, `runbook.rehearsal.*`).

The service and environment are the event's resource, so a team can build Prefect automations on them
(e.g. page someone on `runbook.rollback.failed` for `runbook.service.shop`).
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event


def resource_id(service: str, environment: str) -> str:
    """The event resource of one service in one environment."""
    return f"runbook.service.{service}.{environment}"


def emit(flow: str, kind: str, service: str, environment: str, payload: dict[str, Any] | None = None) -> None:
    """Emit `runbook.<flow>.<kind>` about a service in an environment."""
    emit_event(
        event=f"runbook.{flow}.{kind}",
        resource={
            "prefect.resource.id": resource_id(service, environment),
            "prefect.resource.name": f"{service} ({environment})",
            "runbook.service": service,
            "runbook.environment": environment,
        },
        related=[
            {"prefect.resource.id": f"runbook.service.{service}", "prefect.resource.role": "service"},
            {"prefect.resource.id": f"runbook.environment.{environment}", "prefect.resource.role": "environment"},
        ],
        payload=payload or {},
    )
