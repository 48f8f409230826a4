"""Step 3 (seed 3.2): redeploy the stable image in place of the unstable one, through the deploy target."""

from __future__ import annotations

from prefect import get_run_logger, task

from runbook.config import RunbookConfig
from runbook.errors import RunbookError
from runbook.targets import DeployRequest, DeployResult, build_target
from tasks._policy import NO_CACHE, RUN_ONCE


# Cached for the flow run (RUN_ONCE): when a person retries a run whose deploy completed but whose
# health check failed, the retry must not deploy a second time. Never retried automatically: a
# dispatch is not idempotent. The generous timeout is a backstop: each target has its own deadline.
@task(name="deploy", cache_policy=RUN_ONCE, persist_result=True, timeout_seconds=3600)
def deploy(config: RunbookConfig, request: DeployRequest) -> DeployResult:
    """Deploy the image through the environment's target, unless it already runs that version."""
    logger = get_run_logger()
    target = build_target(config, request.service, request.environment)
    current = target.current_version()
    if current == request.sha:
        detail = f"{target.name} already runs {request.sha[:7]}: nothing to deploy"
        logger.info(detail)
        return DeployResult(target.name, skipped=True, detail=detail)
    logger.info("deploying %s (%s) with %s", request.sha[:7], request.digest, target.name)
    result = target.deploy(request)
    logger.info("%s%s", result.detail, f": {result.link}" if result.link else "")
    return result


@task(name="finish-deploy", cache_policy=NO_CACHE, timeout_seconds=300)
def finish_deploy(config: RunbookConfig, request: DeployRequest, result: DeployResult) -> str | None:
    """Once healthy, let the target clean up what it kept for a way back (e.g. the old container)."""
    try:
        detail = build_target(config, request.service, request.environment).finish(result)
    except RunbookError as exc:
        # The service is healthy: a leftover to clean by hand is a warning, not a failed rollback.
        get_run_logger().warning("clean-up after the deploy failed: %s", exc)
        return f"clean-up failed: {exc}"
    if detail:
        get_run_logger().info(detail)
    return detail


@task(name="preflight-deploy", cache_policy=NO_CACHE, timeout_seconds=120)
def preflight_deploy(config: RunbookConfig, service_name: str, environment: str) -> str:
    """Check, without changing anything, that the deploy target is reachable and usable."""
    detail = build_target(config, service_name, environment).preflight()
    get_run_logger().info("deploy target ready: %s", detail)
    return detail
