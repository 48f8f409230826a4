"""The rollout's record in GitHub Deployments: its intent before the deploy, its outcome after, the bad version.

These records are for people and for tomorrow's last known good: a failure to write one is a warning in the
run, never a reason not to roll back. The intent (`in_progress`, with the rollback id and the digest) is what a
Retry or the next run finds when this one dies mid-deploy (`find_unfinished_rollout`).
"""

from __future__ import annotations

from datetime import timedelta

from github.Repository import Repository
from prefect import get_run_logger, task

from runbook import repository as repo_api
from runbook.errors import RunbookError
from runbook.targets import DeployRequest
from tasks.policy import NO_CACHE, run_once

# An unfinished rollout older than this is history, not something in flight.
UNFINISHED_MAX_AGE = timedelta(hours=6)


@task(name="find-unfinished-rollout", cache_policy=NO_CACHE)
def find_unfinished_rollout(repo: Repository, environment: str) -> repo_api.UnfinishedRollout | None:
    """A rollout of this service and environment left `in_progress` by a run that died (or this run, retried)."""
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
@task(name="open-rollout", cache_policy=run_once(exclude="repo"), persist_result=True)
def open_rollout(repo: Repository, request: DeployRequest, run_url: str | None, from_sha: str | None) -> int | None:
    """Record the rollout's intent in GitHub Deployments as `in_progress` (once per flow run); its id, or None."""
    logger = get_run_logger()
    payload = {
        "tool": repo_api.TOOL,
        "rollback_id": request.rollback_id,
        "digest": request.digest,
        "image": request.image,
        "from_sha": from_sha or "",
    }
    try:
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
        logger.warning("could not record the rollout in GitHub: %s", exc)
        return None
    logger.info("GitHub deployment %s: %s in_progress in %s", deployment_id, request.sha[:7], request.environment)
    return deployment_id


@task(name="close-rollout", cache_policy=NO_CACHE)
def close_rollout(repo: Repository, deployment_id: int, state: str, description: str, run_url: str | None) -> bool:
    """Set the rollout's final GitHub status: `success` (healthy: a known good from now on), `failure` or `error`."""
    try:
        repo_api.set_deployment_status(repo, deployment_id, state=state, description=description, log_url=run_url)
    except RunbookError as exc:
        get_run_logger().warning("could not record the rollout's outcome in GitHub: %s", exc)
        return False
    get_run_logger().info("GitHub deployment %s: %s", deployment_id, state)
    return True


@task(name="mark-rolled-back", cache_policy=NO_CACHE)
def mark_rolled_back(
    repo: Repository,
    environment: str,
    sha: str,
    reason: str,
    deployment_id: int | None = None,
    run_url: str | None = None,
) -> bool:
    """Mark the version rolled back from as bad in GitHub Deployments, so it is never a last known good.

    `deployment_id` is the deployment found running when the running version was read from GitHub
    Deployments; without it, the newest deployment of `sha` is marked. Never a deployment of another commit.
    """
    description = f"rolled back by rollback-runbook: {reason or 'unhealthy'}"
    try:
        deployment_id = repo_api.mark_rolled_back(repo, environment, sha, description, deployment_id, run_url)
    except RunbookError as exc:
        get_run_logger().warning("could not mark %s as rolled back in GitHub: %s", sha[:7], exc)
        return False
    if deployment_id is not None:
        get_run_logger().info("GitHub deployment %s of %s: failure (rolled back)", deployment_id, sha[:7])
    return deployment_id is not None
