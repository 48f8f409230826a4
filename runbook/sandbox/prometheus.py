"""A real Prometheus server (Debian `prometheus`) scraping sandbox services, for the demo and the tests.

`PrometheusServer({"shop": "127.0.0.1:PORT"})` runs `/usr/bin/prometheus` with its own configuration (every
job scraped each second, rules evaluated each second), listening on a free 127.0.0.1 port, storing its TSDB
in a temporary directory, and waits until `/-/ready` answers. It scrapes only the targets given; the
targets must be on 127.0.0.1. `wait_for_target_up()` waits for the first successful scrapes.

Debian's package also installs a system service on :9090; this one does not use or need it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

PROMETHEUS = "/usr/bin/prometheus"


class SandboxPrometheusError(RuntimeError):
    """The sandbox Prometheus could not be started, or a target did not come up."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusServer:
    """A Prometheus process on 127.0.0.1 scraping the given jobs, for as long as the context lasts."""

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
        self.scrape_interval = scrape_interval
        self._startup_timeout = startup_timeout
        self._tmp: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.port = 0

    def __repr__(self) -> str:
        return f"PrometheusServer(jobs={self.jobs!r}, base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, what `MetricCheck.prometheus_url` points at."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def root(self) -> Path:
        if self._tmp is None:
            raise SandboxPrometheusError("Prometheus is not running: use it as a context manager")
        return self._tmp

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

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the configuration, start Prometheus and wait until it is ready."""
        if not Path(PROMETHEUS).exists():
            raise SandboxPrometheusError(f"{PROMETHEUS} is missing: apt-get install prometheus")
        self._tmp = Path(tempfile.mkdtemp(prefix="runbook-prometheus-"))
        try:
            (self.root / "prometheus.yml").write_text(json.dumps(self._config(), indent=2))  # JSON is YAML
            last_error = ""
            for _ in range(3):  # another process may take the free port between probe and bind
                try:
                    self._start_once(_free_port())
                    return
                except SandboxPrometheusError as exc:
                    last_error = str(exc)
                    if "address already in use" not in last_error:
                        raise
            raise SandboxPrometheusError(last_error)
        except BaseException:
            self.stop()
            raise

    def _start_once(self, port: int) -> None:
        self._log = open(self.root / "prometheus.log", "w+b")  # noqa: SIM115 - closed in _stop_process()
        self._process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={self.root / 'data'}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=self.root,
        )
        self.port = port
        deadline = time.monotonic() + self._startup_timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    log = self._log_tail()
                    self._stop_process()
                    raise SandboxPrometheusError(f"prometheus exited with code {code} on start: {log}")
                try:
                    if client.get(f"{self.base_url}/-/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    log = self._log_tail()
                    self._stop_process()
                    raise SandboxPrometheusError(
                        f"prometheus was not ready on {self.base_url} within {self._startup_timeout:.0f} s: {log}"
                    )
                time.sleep(0.05)

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

    def _log_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return "(no log)"
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        if len(text) > limit:
            text = f"{text[: limit // 2]}\n...\n{text[-limit // 2 :]}"
        return text or "(empty log)"

    def log(self) -> str:
        """What Prometheus wrote so far (handy when a test fails)."""
        return self._log_tail(limit=20000)

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop Prometheus and remove its configuration and data."""
        self._stop_process()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
