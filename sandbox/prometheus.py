"""A real Prometheus server (Debian `prometheus`) scraping sandbox services, for the demo and the tests.

`PrometheusServer({"shop": "127.0.0.1:PORT"})` runs `/usr/bin/prometheus` with its own configuration (every
job scraped each second, rules evaluated each second), listening on a free 127.0.0.1 port, storing its TSDB
in a temporary directory, and waits until `/-/ready` answers. It scrapes only the targets given; the
targets must be on 127.0.0.1. `wait_for_target_up()` waits for the first successful scrapes.

Debian's package also installs a system service on :9090; this one does not use or need it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from sandbox.process import LocalServer

PROMETHEUS = "/usr/bin/prometheus"


class SandboxPrometheusError(RuntimeError):
    """The sandbox Prometheus could not be started, or a target did not come up."""


class PrometheusServer(LocalServer):
    """A Prometheus process on 127.0.0.1 scraping the given jobs, for as long as the context lasts."""

    _error = SandboxPrometheusError
    _name = "prometheus"
    _title = "Prometheus"
    _tmp_prefix = "runbook-prometheus-"
    _log_name = "prometheus.log"
    _stop_timeout = 10.0

    def __init__(
        self,
        jobs: Mapping[str, str | Sequence[str]],
        *,
        scrape_interval: str = "1s",
        startup_timeout: float = 30.0,
    ) -> None:
        if not jobs:
            raise ValueError("give at least one job: {'shop': '127.0.0.1:PORT'}")
        self.jobs = {job: [targets] if isinstance(targets, str) else list(targets) for job, targets in jobs.items()}
        for job, targets in self.jobs.items():
            for target in targets:
                if not target.startswith("127.0.0.1:"):
                    raise ValueError(f"job {job!r}: target {target!r} must be 127.0.0.1:PORT")
        super().__init__(startup_timeout=startup_timeout)
        self.scrape_interval = scrape_interval
        self.port = 0

    def __repr__(self) -> str:
        return f"PrometheusServer(jobs={self.jobs!r}, base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, what `MetricCheck.prometheus_url` points at."""
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": targets}]}
                for job, targets in self.jobs.items()
            ],
        }

    def _preflight(self) -> None:
        self._require(PROMETHEUS, "prometheus")

    def _start(self) -> None:
        """Write the configuration, start Prometheus and wait until it is ready."""
        (self.root / "prometheus.yml").write_text(json.dumps(self._config(), indent=2))  # JSON is YAML
        self._start_on_free_port(self._start_once)

    def _start_once(self, port: int) -> None:
        self._spawn(
            [
                PROMETHEUS,
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={self.root / 'data'}",
                "--log.level=warn",
            ]
        )
        self.port = port
        self._wait_for_http(f"{self.base_url}/-/ready", f"was not ready on {self.base_url}")

    def wait_for_target_up(self, timeout: float = 15.0, job: str | None = None) -> None:
        """Wait until every target of `job` (default: of every job) was scraped successfully."""
        jobs = [job] if job is not None else list(self.jobs)
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        with httpx.Client(timeout=2.0) as client:
            while True:
                response = client.get(f"{self.base_url}/api/v1/targets", params={"state": "active"})
                response.raise_for_status()
                states = {
                    f"{t['labels'].get('job')} {t['scrapeUrl']}": t["health"]
                    + (f" ({t['lastError']})" if t.get("lastError") else "")
                    for t in response.json()["data"]["activeTargets"]
                    if t["labels"].get("job") in jobs
                }
                wanted = sum(len(self.jobs[j]) for j in jobs)
                if len(states) == wanted and all(state == "up" for state in states.values()):
                    return
                if time.monotonic() > deadline:
                    raise SandboxPrometheusError(f"targets not up within {timeout:g} s: {states or 'none yet'}")
                time.sleep(0.1)
