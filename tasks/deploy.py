"""Step 3 (seed 3.2): redeploy the stable image in place of the unstable one, through the deploy target."""

from __future__ import annotations

from prefect import get_run_logger, task

from runbook.errors import RunbookError
from runbook.targets import DeployRequest, DeployResult, DeployTarget
from tasks.policy import NO_CACHE, run_once


# Cached for the flow run: when a person retries a run whose deploy completed but whose health check failed, the
# retry must not deploy a second time. Never retried automatically: a dispatch is not idempotent. No Prefect
# timeout (it could not interrupt the blocking call): each target bounds its own calls and has its own deadline.
@task(name="deploy", cache_policy=run_once(exclude=("target", "running", "asked")), persist_result=True)
def deploy(
    target: DeployTarget, request: DeployRequest, running: str | None = None, *, asked: bool = False
) -> DeployResult:
    """Deploy the image through the environment's target, unless it already runs that version.

    `asked`: the target was asked which version runs while the SHA was resolved, and `running` is what it said
    (None: it could not tell); it is not asked twice. Otherwise (a resumed rollout) it is asked now.
    """
    logger = get_run_logger()
    current = running if asked else target.current_version()
    if current == request.sha:
        detail = f"{target.name} already runs {request.sha[:7]}: nothing to deploy"
        logger.info(detail)
        return DeployResult(target.name, skipped=True, detail=detail)
    logger.info("deploying %s (%s) with %s", request.sha[:7], request.digest, target.name)
    result = target.deploy(request)
    logger.info("%s%s", result.detail, f": {result.link}" if result.link else "")
    return result


@task(name="finish-deploy", cache_policy=NO_CACHE)
def finish_deploy(target: DeployTarget, result: DeployResult) -> str | None:
    """Once healthy, let the target clean up what it kept for a way back (e.g. the old container)."""
    try:
        detail = target.finish(result)
    except RunbookError as exc:
        # The service is healthy: a leftover to clean by hand is a warning, not a failed rollback.
        get_run_logger().warning("clean-up after the deploy failed: %s", exc)
        return f"clean-up failed: {exc}"
    if detail:
        get_run_logger().info(detail)
    return detail


@task(name="preflight-deploy", cache_policy=NO_CACHE)
def preflight_deploy(target: DeployTarget) -> str:
    """Check, without changing anything, that the deploy target is reachable and usable."""
    detail = target.preflight()
    get_run_logger().info("deploy target ready: %s", detail)
    return detail
