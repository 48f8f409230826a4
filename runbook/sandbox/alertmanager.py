"""A real Prometheus Alertmanager (Debian `prometheus-alertmanager`) sending its webhook to the alert endpoint.

`AlertmanagerServer(webhook_url, token=...)` runs `/usr/bin/prometheus-alertmanager` on a free 127.0.0.1 port
with its own configuration and storage in a temporary directory, no cluster gossip, one route grouped by
service and environment to one webhook receiver (bearer token from a 0600 file, `send_resolved: true`). Alerts
are posted with `post_alerts()` to `/api/v2/alerts`, as Prometheus does.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def _free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SandboxAlertmanagerError(RuntimeError):
    """The sandbox Alertmanager could not be started or refused a request."""


class AlertmanagerServer:
    """An Alertmanager process on 127.0.0.1 for as long as the context lasts."""

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
        self.webhook_url = webhook_url
        self._token = token
        self.group_by = list(group_by)
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.send_resolved = send_resolved
        self._startup_timeout = startup_timeout
        self._tmp: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.port = 0

    def __repr__(self) -> str:
        return f"AlertmanagerServer(base_url={self.base_url!r}, webhook_url={self.webhook_url!r})"

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def root(self) -> Path:
        """The temporary directory holding the configuration, the token file and the storage."""
        if self._tmp is None:
            raise SandboxAlertmanagerError("Alertmanager is not running: use it as a context manager")
        return self._tmp

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

    def __enter__(self) -> AlertmanagerServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the configuration, start Alertmanager and wait until `/-/ready` answers 200."""
        if not Path(ALERTMANAGER).exists():
            raise SandboxAlertmanagerError(f"{ALERTMANAGER} is missing: apt-get install prometheus-alertmanager")
        self._tmp = Path(tempfile.mkdtemp(prefix="runbook-alertmanager-"))
        try:
            (self.root / "storage").mkdir()
            config_path = self.root / "alertmanager.yml"
            config_path.write_text(json.dumps(self.config(), indent=2))
            last_error = ""
            for _ in range(3):  # another process may grab the free port between probe and bind
                try:
                    self._start_once(config_path, _free_port())
                    return
                except SandboxAlertmanagerError as exc:
                    last_error = str(exc)
                    if "address already in use" not in last_error:
                        raise
            raise SandboxAlertmanagerError(last_error)
        except BaseException:
            self.stop()
            raise

    def _start_once(self, config_path: Path, port: int) -> None:
        self.port = port
        self._log = open(self.root / "alertmanager.log", "w+b")  # noqa: SIM115 - closed in _stop_process()
        self._process = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config_path}",
                f"--storage.path={self.root / 'storage'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--web.external-url={self.base_url}",
                "--cluster.listen-address=",  # empty: no gossip, no port 9094, ready at once
                "--log.level=debug",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=self.root,
        )
        deadline = time.monotonic() + self._startup_timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    log = self._log_tail()
                    self._stop_process()
                    raise SandboxAlertmanagerError(f"Alertmanager exited with code {code} on start: {log}")
                try:
                    if client.get(f"{self.base_url}/-/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    log = self._log_tail()
                    self._stop_process()
                    raise SandboxAlertmanagerError(
                        f"Alertmanager was not ready on {self.base_url} within {self._startup_timeout:.0f} s: {log}"
                    )
                time.sleep(0.05)

    def _log_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return "(no log)"
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        if len(text) > limit:
            text = f"{text[: limit // 2]}\n...\n{text[-limit // 2 :]}"
        return text or "(empty log)"

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop Alertmanager and remove its temporary directory."""
        self._stop_process()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def log(self) -> str:
        """What Alertmanager logged so far (debug level: each notification attempt and its error)."""
        return self._log_tail(limit=50000)

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
