"""Step 3 (seed 3.2): redeploy the stable image in place of the unstable one, through the deploy target."""

from __future__ import annotations

from datetime import timedelta

from prefect import get_run_logger, task

from runbook import repository as repo_api
from runbook.config import RunbookConfig
from runbook.errors import RunbookError
from runbook.targets import DeployRequest, DeployResult, build_target
from tasks.policy import NO_CACHE, RUN_ONCE

# An unfinished rollout older than this is history, not something in flight.
UNFINISHED_MAX_AGE = timedelta(hours=6)


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


@task(name="find-unfinished-rollout", cache_policy=NO_CACHE, timeout_seconds=60)
def find_unfinished_rollout(
    config: RunbookConfig, service_name: str, environment: str
) -> repo_api.UnfinishedRollout | None:
    """A rollout of this service and environment left `in_progress` by a run that died (or this run, retried)."""
    service = config.service(service_name)
    repo = repo_api.connect(config.github, service.repository)
    found = repo_api.unfinished_rollout(repo, environment, UNFINISHED_MAX_AGE)
    if found is not None:
        get_run_logger().warning(
            "rollback %s to %s (GitHub deployment %s, %s) never finished: following it instead of deploying again",
            found.rollback_id,
            found.sha[:7],
            found.deployment_id,
            found.created_at.isoformat(timespec="seconds"),
        )
    return found


# Cached for the flow run: this is the intent, recorded BEFORE the deploy call, so that a Retry of this run, or a
# new run after this one died, finds the deploy it may have started (by its rollback id) instead of starting one.
@task(name="open-rollout", cache_policy=RUN_ONCE, persist_result=True, timeout_seconds=120)
def open_rollout(
    config: RunbookConfig, request: DeployRequest, run_url: str | None, from_sha: str | None
) -> int | None:
    """Record the rollout's intent in GitHub Deployments as `in_progress` (once per flow run); its id, or None."""
    logger = get_run_logger()
    service = config.service(request.service)
    payload = {
        "tool": repo_api.TOOL,
        "rollback_id": request.rollback_id,
        "digest": request.digest,
        "image": request.image,
        "from_sha": from_sha or "",
    }
    try:
        repo = repo_api.connect(config.github, service.repository)
        deployment_id = repo_api.record_deployment(
            repo,
            sha=request.sha,
            environment=request.environment,
            state="in_progress",
            description=f"rollback to {request.sha[:7]} by rollback-runbook",
            log_url=run_url,
            payload=payload,
        )
    except RunbookError as exc:
        # The record is for people and for tomorrow's last known good: never a reason not to roll back.
        logger.warning("could not record the rollout in GitHub: %s", exc)
        return None
    logger.info("GitHub deployment %s: %s in_progress in %s", deployment_id, request.sha[:7], request.environment)
    return deployment_id


@task(name="close-rollout", cache_policy=NO_CACHE, timeout_seconds=120)
def close_rollout(
    config: RunbookConfig, service_name: str, deployment_id: int, state: str, description: str, run_url: str | None
) -> bool:
    """Set the rollout's final GitHub status: `success` (healthy: a known good from now on) or `failure`."""
    service = config.service(service_name)
    try:
        repo = repo_api.connect(config.github, service.repository)
        repo_api.set_deployment_status(repo, deployment_id, state=state, description=description, log_url=run_url)
    except RunbookError as exc:
        get_run_logger().warning("could not record the rollout's outcome in GitHub: %s", exc)
        return False
    get_run_logger().info("GitHub deployment %s: %s", deployment_id, state)
    return True


@task(name="mark-rolled-back", cache_policy=NO_CACHE, timeout_seconds=120)
def mark_rolled_back(
    config: RunbookConfig,
    service_name: str,
    environment: str,
    sha: str,
    reason: str,
    deployment_id: int | None = None,
) -> bool:
    """Mark the version rolled back from as bad in GitHub Deployments, so it is never a last known good.

    `deployment_id` is the deployment found running when the running version was read from GitHub
    Deployments; without it, the newest deployment of `sha` is marked. Never a deployment of another commit.
    """
    service = config.service(service_name)
    description = f"rolled back by rollback-runbook: {reason or 'unhealthy'}"
    try:
        repo = repo_api.connect(config.github, service.repository)
        deployment_id = repo_api.mark_rolled_back(repo, environment, sha, description, deployment_id)
    except RunbookError as exc:
        get_run_logger().warning("could not mark %s as rolled back in GitHub: %s", sha[:7], exc)
        return False
    if deployment_id is not None:
        get_run_logger().info("GitHub deployment %s of %s: failure (rolled back)", deployment_id, sha[:7])
    return deployment_id is not None
