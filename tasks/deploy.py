"""Step 3 (seed 3.2): redeploy the stable image in place of the unstable one, through the deploy target."""

from __future__ import annotations

from prefect import get_run_logger, task

from runbook import repository as repo_api
from runbook.config import RunbookConfig
from runbook.targets import DeployRequest, DeployResult, DeployTarget, build_target
from tasks._policy import NO_CACHE, RUN_ONCE


def _target(config: RunbookConfig, service_name: str, environment: str) -> DeployTarget:
    service = config.service(service_name)
    repo = repo_api.connect(config.github, service.repository)
    return build_target(repo, service, environment, config.environment(service_name, environment))


# Cached for the flow run (RUN_ONCE): when a person retries a run whose deploy completed but whose
# health check failed, the retry must not deploy a second time. Never retried automatically: a
# dispatch is not idempotent.
@task(
    name="deploy", cache_policy=RUN_ONCE, persist_result=True, timeout_seconds=3600
)  # the target has its own, shorter deadline
def deploy(config: RunbookConfig, request: DeployRequest) -> DeployResult:
    """Deploy the image through the environment's target, unless it already runs that version."""
    logger = get_run_logger()
    target = _target(config, request.service, request.environment)
    current = target.current_version()
    if current == request.sha:
        detail = f"{target.name} already runs {request.sha[:7]}: nothing to deploy"
        logger.info(detail)
        return DeployResult(target.name, skipped=True, detail=detail)
    logger.info("deploying %s (%s) with %s", request.sha[:7], request.digest, target.name)
    result = target.deploy(request)
    logger.info("%s%s", result.detail, f": {result.link}" if result.link else "")
    return result


@task(name="preflight-deploy", cache_policy=NO_CACHE, timeout_seconds=120)
def preflight_deploy(config: RunbookConfig, service_name: str, environment: str) -> str:
    """Check, without changing anything, that the deploy target is reachable and usable."""
    detail = _target(config, service_name, environment).preflight()
    get_run_logger().info("deploy target ready: %s", detail)
    return detail
