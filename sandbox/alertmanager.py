"""A real Prometheus Alertmanager (Debian `prometheus-alertmanager`) sending its webhook to the alert endpoint.

`AlertmanagerServer(webhook_url, token=...)` runs `/usr/bin/prometheus-alertmanager` on a free 127.0.0.1 port
with its own configuration and storage in a temporary directory, no cluster gossip, one route grouped by
service and environment to one webhook receiver (bearer token from a 0600 file, `send_resolved: true`). Alerts
are posted with `post_alerts()` to `/api/v2/alerts`, as Prometheus does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from sandbox.process import LocalServer

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


class SandboxAlertmanagerError(RuntimeError):
    """The sandbox Alertmanager could not be started or refused a request."""


class AlertmanagerServer(LocalServer):
    """An Alertmanager process on 127.0.0.1 for as long as the context lasts.

    `log()` holds what it logged so far at debug level: each notification attempt and its error.
    """

    _error = SandboxAlertmanagerError
    _name = "Alertmanager"
    _title = "Alertmanager"
    _tmp_prefix = "runbook-alertmanager-"
    _log_name = "alertmanager.log"
    _log_full_limit = 50000

    def __init__(
        self,
        webhook_url: str,
        *,
        token: str | None = None,
        group_by: Sequence[str] = ("service", "environment"),
        group_wait: str = "0s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        send_resolved: bool = True,
        startup_timeout: float = 20.0,
    ) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self.webhook_url = webhook_url
        self._token = token
        self.group_by = list(group_by)
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.send_resolved = send_resolved
        self.port = 0

    def __repr__(self) -> str:
        return f"AlertmanagerServer(base_url={self.base_url!r}, webhook_url={self.webhook_url!r})"

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The Alertmanager configuration (written as JSON, which is valid YAML)."""
        webhook: dict[str, Any] = {"url": self.webhook_url, "send_resolved": self.send_resolved}
        if self._token is not None:
            token_file = self.root / "webhook-token"
            token_file.touch(mode=0o600)
            token_file.write_text(self._token)
            webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
        return {
            "route": {
                "receiver": "rollback",
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [{"name": "rollback", "webhook_configs": [webhook]}],
        }

    def _preflight(self) -> None:
        self._require(ALERTMANAGER, "prometheus-alertmanager")

    def _start(self) -> None:
        """Write the configuration, start Alertmanager and wait until `/-/ready` answers 200."""
        (self.root / "storage").mkdir()
        config_path = self.root / "alertmanager.yml"
        config_path.write_text(json.dumps(self.config(), indent=2))
        self._start_on_free_port(lambda port: self._start_once(config_path, port))

    def _start_once(self, config_path: Path, port: int) -> None:
        self.port = port
        self._spawn(
            [
                ALERTMANAGER,
                f"--config.file={config_path}",
                f"--storage.path={self.root / 'storage'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--web.external-url={self.base_url}",
                "--cluster.listen-address=",  # empty: no gossip, no port 9094, ready at once
                "--log.level=debug",
            ]
        )
        self._wait_for_http(f"{self.base_url}/-/ready", f"was not ready on {self.base_url}")

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """POST alerts (`labels`, `annotations`, `startsAt`, `endsAt`, `generatorURL`) to `/api/v2/alerts`."""
        response = httpx.post(f"{self.base_url}/api/v2/alerts", json=alerts, timeout=10.0)
        if response.status_code != 200:
            raise SandboxAlertmanagerError(
                f"Alertmanager refused the alerts: HTTP {response.status_code}: {response.text[:500]}"
            )

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now (`GET /api/v2/alerts`)."""
        response = httpx.get(f"{self.base_url}/api/v2/alerts", timeout=10.0)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found

    def notifications(self, integration: str = "webhook") -> tuple[int, int]:
        """(attempted, failed) notification counts from `/metrics`, summed over every label set."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10.0).text
        counts = {"alertmanager_notifications_total": 0.0, "alertmanager_notifications_failed_total": 0.0}
        for line in text.splitlines():
            match = re.match(r"^(alertmanager_notifications(?:_failed)?_total)\{([^}]*)\}\s+(\S+)$", line)
            if match and f'integration="{integration}"' in match.group(2):
                counts[match.group(1)] += float(match.group(3))
        return int(counts["alertmanager_notifications_total"]), int(counts["alertmanager_notifications_failed_total"])
