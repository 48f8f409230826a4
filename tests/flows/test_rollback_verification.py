"""The rollback's verification beyond the probes: the error rate in a real Prometheus, and smoke checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flows.rollback import rollback
from runbook.config import using_config
from sandbox.metrics_app import MetricsApp
from sandbox.prometheus import PrometheusServer
from sandbox.world import ENVIRONMENT, SERVICE, Sandbox

pytestmark = pytest.mark.usefixtures("prefect_server")
JOB = "shop"


@pytest.fixture(scope="module")
def metrics() -> Iterator[tuple[MetricsApp, PrometheusServer]]:
    with MetricsApp(traffic_per_second=20) as app, PrometheusServer({JOB: app.target}) as prometheus:
        prometheus.wait_for_target_up(timeout=30)
        deadline = time.monotonic() + 30
        query = f'sum(rate(http_requests_total{{job="{JOB}"}}[5s]))'
        while time.monotonic() < deadline:  # wait for two scrapes in the window, so the ratio exists
            result = httpx.get(f"{prometheus.base_url}/api/v1/query", params={"query": query}).json()
            if result["data"]["result"]:
                break
            time.sleep(0.5)
        yield app, prometheus
        app.failing = False


def _config(sandbox: Sandbox, metrics: tuple[MetricsApp, PrometheusServer], **extra: Any) -> str:
    app, prometheus = metrics
    overrides: dict[str, Any] = {
        "metric": {
            "prometheus_url": prometheus.base_url,
            "job": JOB,
            "window": "5s",
            "threshold": 0.05,
            "hold_seconds": 1.5,
            "interval_seconds": 0.5,
            "deadline_seconds": 6,
        },
        "smoke": [
            {"name": "cart", "url": f"{app.url}/api/cart", "json_field": "data.items.0.id"},
            {"name": "login", "url": f"{app.url}/login", "contains": "Sign in"},
        ],
    }
    overrides.update(extra)
    return str(sandbox.write_config(sandbox.config_data(**overrides), "verified.yaml"))


def test_metric_and_smoke_checks_confirm_the_recovery(
    sandbox: Sandbox, metrics: tuple[MetricsApp, PrometheusServer]
) -> None:
    metrics[0].failing = False
    with using_config(_config(sandbox, metrics)):
        state = rollback(service=SERVICE, environment=ENVIRONMENT, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert {"metric-check", "smoke-checks"} <= set(summary.step_seconds)
    markdown = summary.postmortem
    assert "## Error rate (metric check)" in markdown and "http_requests_total" in markdown
    assert "## Smoke checks (key features)" in markdown and "cart" in markdown and "login" in markdown


def test_a_high_error_rate_fails_the_rollback_naming_query_values_and_threshold(
    sandbox: Sandbox, metrics: tuple[MetricsApp, PrometheusServer]
) -> None:
    metrics[0].failing = True
    try:
        with using_config(_config(sandbox, metrics)):
            state = rollback(service=SERVICE, environment=ENVIRONMENT, return_state=True)
    finally:
        metrics[0].failing = False
    assert state.is_failed()
    failure = sandbox.slack.messages[-1].text
    assert "*metric-check*" in failure and "http_requests_total" in failure and "0.05" in failure
    # Not recorded healthy in GitHub: a rollback that did not bring the error rate down is no "known good".
    attempt = sandbox.github.deployments("acme/shop", ENVIRONMENT)[0]
    assert attempt["sha"] == sandbox.commits.last_known_good
    assert [s["state"] for s in attempt["statuses"]] == ["failure", "in_progress"]
