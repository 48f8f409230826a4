"""Step 4 (seed 3.3): the service answers healthy again (probes), its error rate holds, its key features work."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import get_run_logger, task

from runbook.config import HealthSettings, MetricCheck, SmokeCheck
from runbook.probes import HealthReport, run_health_check
from runbook.prometheus import run_metric_check
from runbook.smoke import run_smoke_checks
from tasks.policy import NO_CACHE


# No Prefect timeouts on these steps (they could not interrupt a blocking call): each request is bounded by its
# client's timeout, and each check by its own deadline from the settings.
@task(name="health-check", cache_policy=NO_CACHE)
def check_health(settings: HealthSettings) -> HealthReport:
    """Wait until every health probe passes the configured number of rounds in a row."""
    report = run_health_check(settings)
    for line in report.summary():
        get_run_logger().info("health: %s", line)
    return report


@task(name="metric-check", cache_policy=NO_CACHE)
def check_metric(check: MetricCheck) -> list[str]:
    """The error rate (a Prometheus query) stays under its threshold for the hold time; each sample is logged."""
    logger = get_run_logger()
    logger.info("metric check: %s < %s for %.0f s", check.promql, check.threshold, check.hold_seconds)
    report = run_metric_check(check)
    for line in report.summary():
        logger.info("metric: %s", line)
    return report.summary()


@task(name="smoke-checks", cache_policy=NO_CACHE)
def check_smoke(checks: Sequence[SmokeCheck]) -> list[str]:
    """Key features answer as expected (the seed's manual validation, automated); all run, failures listed."""
    report = run_smoke_checks(list(checks))
    for line in report.summary():
        get_run_logger().info("smoke: %s", line)
    return report.summary()
