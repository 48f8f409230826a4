"""Step 1 of the seed (3.1): the stable commit to return to, given by a person or the last known good."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from github.Repository import Repository
from prefect import get_run_logger, task

from runbook import repository as repo_api
from runbook.clients import Scope
from runbook.config import ServiceSettings
from runbook.errors import AlreadyRunningError, NotOnBranchError, ShaError
from runbook.registry import RegistryClient
from runbook.running import UNKNOWN, RunningVersion, find_running
from runbook.service_images import image_exists
from runbook.shas import last_known_good_candidates, normalize_sha
from runbook.targets import DeployTarget
from tasks.policy import run_once


@dataclass(frozen=True)
class Resolution:
    """The commit to return to, the one running now, and how the choice was made."""

    sha: str
    title: str
    running: str | None
    source: str  # "given", "last known good", "first parent"
    warning: str | None = None
    compare_url: str | None = None
    running_source: str = UNKNOWN  # where `running` was read: "version probe", "GitHub Deployments"...
    running_authoritative: bool = False  # the service or its deploy target said so, not only a GitHub record
    running_deployment_id: int | None = None  # the GitHub deployment found running (GitHub Deployments only)
    running_from_target: bool = False  # the deploy target itself said `running` (it was asked first)

    @property
    def short(self) -> str:
        return self.sha[:7]


def resolve(
    repo: Repository,
    service: ServiceSettings,
    environment: str,
    requested: str | None,
    current: RunningVersion,
    image_exists: Callable[[str], bool],
) -> Resolution:
    """Choose and check the target commit (I/O through `repo` and `image_exists`)."""
    running = current.sha

    def pick(commit: repo_api.Commit, source: str, warning: str | None = None) -> Resolution:
        return Resolution(
            commit.sha,
            commit.title,
            running,
            source,
            warning,
            running_source=current.source,
            running_authoritative=current.authoritative,
            running_deployment_id=current.deployment_id,
            running_from_target=current.from_target,
        )

    if requested and requested.strip():
        sha = normalize_sha(requested)
        commit = repo_api.get_commit(repo, sha)
        if not repo_api.contains(repo, service.branch, commit.sha):
            raise NotOnBranchError(
                f"commit {commit.sha[:7]} is not on branch {service.branch} of {service.repository}",
                hint=f"roll back only to a commit that was merged into {service.branch}",
            )
        warning = None
        if running and commit.sha == running:
            if current.authoritative:
                raise AlreadyRunningError(
                    f"{commit.sha[:7]} is already the version running in {environment} (per the "
                    f"{current.source}): nothing to roll back",
                    hint="give an older SHA, or leave the SHA empty to return to the last known good version",
                )
            # Only a record says so, and records lag behind what runs (a deploy outside the tool, a failed
            # rollback): the person who gave this SHA may well know better, so deploy it.
            warning = (
                f"{commit.sha[:7]} is the newest live deployment in {environment} according to "
                f"{current.source}, which only records deploys; nothing confirms it runs, so it is deployed"
            )
        return pick(commit, "given", warning)

    if not running:
        raise ShaError(
            f"cannot tell which version runs in {environment}: the deploy target cannot say, no version probe "
            "answered and no deployment that went live is recorded in GitHub",
            hint="give the SHA to return to explicitly, or configure a version_probe for the environment",
        )
    healthy = repo_api.healthy_shas(repo, environment)
    candidates = last_known_good_candidates(repo_api.history(repo, running), running, healthy)
    chosen = repo_api.first_existing(candidates, image_exists)
    if chosen:
        commit = repo_api.get_commit(repo, chosen)
        return pick(commit, "last known good")

    running_commit = repo_api.get_commit(repo, running)
    if not running_commit.parents:
        raise ShaError(
            f"no earlier version of {service.repository} exists before {running[:7]}",
            hint="nothing to roll back to; fix forward",
        )
    parent = repo_api.get_commit(repo, running_commit.parents[0])
    warning = (
        f"no rollout older than {running[:7]} is recorded healthy in {environment} (with its image); "
        f"falling back to the first parent {parent.sha[:7]}: check it is a version you trust"
    )
    return pick(parent, "first parent", warning)


@task(name="resolve-sha", cache_policy=run_once(exclude=("repo", "target", "registry")), persist_result=True)
def resolve_sha(
    scope: Scope,
    repo: Repository,
    target: DeployTarget,
    registry: RegistryClient,
    requested: str | None,
    current: RunningVersion | None = None,
) -> Resolution:
    """Resolve the commit SHA to roll back to, and say how it was chosen.

    `current`: the running version, when this run has just read it (checking its ready target): not read twice.
    """
    return resolve_for(scope, repo, target, registry, requested, get_run_logger(), current)


def resolve_for(
    scope: Scope,
    repo: Repository,
    target: DeployTarget,
    registry: RegistryClient,
    requested: str | None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    current: RunningVersion | None = None,
) -> Resolution:
    """The resolution `resolve-sha` makes (also what a ready target is prepared with, runbook/ready.py)."""
    service, environment = scope.service, scope.environment
    # Why a more trusted source was skipped goes in the run's warnings (and so the post-mortem), too.
    warnings: list[str] = []

    def warn(message: str) -> None:
        logger.warning(message)
        warnings.append(message)

    if current is None:
        current = find_running(repo, environment, scope.settings, target, warn)
    logger.info(
        "running in %s: %s, read from %s%s",
        environment,
        (current.sha or "unknown")[:7],
        current.source,
        "" if current.authoritative else " (what was recorded, not what the service says)",
    )
    resolution = resolve(
        repo, service, environment, requested, current, lambda sha: image_exists(registry, service, sha)
    )
    if resolution.warning:
        warn(resolution.warning)
    resolution = replace(resolution, warning="; ".join(warnings) or None)
    if resolution.running and resolution.running != resolution.sha:
        resolution = replace(resolution, compare_url=scope.compare_url(resolution.sha, resolution.running))
    logger.info(
        "rolling back %s/%s from %s (per %s) to %s (%s): %s",
        service.repository,
        environment,
        (resolution.running or "unknown")[:7],
        resolution.running_source,
        resolution.short,
        resolution.source,
        resolution.title,
    )
    return resolution
