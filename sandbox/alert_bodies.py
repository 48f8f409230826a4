"""An Alertmanager webhook body (version 4) of one firing alert, as the tests and benchmarks send it."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def alertmanager_body(
    service: str,
    *,
    starts_at: datetime,
    fingerprint: str,
    environment: str = "production",
    environment_label: str = "environment",
) -> dict[str, Any]:
    """One firing `HighErrorRate` alert for `service`, eligible by the default match (`rollback=auto`)."""
    labels = {"alertname": "HighErrorRate", "service": service, environment_label: environment, "rollback": "auto"}
    return {
        "version": "4",
        "status": "firing",
        "receiver": "runbook",
        "groupKey": f'{{}}:{{service="{service}"}}',
        "groupLabels": {"service": service},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": f"{service} 5xx above 5%"},
                "startsAt": starts_at.isoformat().replace("+00:00", "Z"),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }
