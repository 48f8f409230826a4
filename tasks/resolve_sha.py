"""Step 1 of the seed (3.1): the stable commit to return to, given by a person or the last known good."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from github.Repository import Repository
from prefect import get_run_logger, task

from runbook import repository as repo_api
from runbook.config import RunbookConfig, ServiceSettings
from runbook.errors import AlreadyRunningError, NotOnBranchError, ShaError
from runbook.images import image_exists, registry_client
from runbook.shas import last_known_good_candidates, normalize_sha
from runbook.targets import build_target
from tasks._policy import RUN_ONCE


@dataclass(frozen=True)
class Resolution:
    """The commit to return to, the one running now, and how the choice was made."""

    sha: str
    title: str
    running: str | None
    source: str  # "given", "last known good", "first parent"
    warning: str | None = None
    compare_url: str | None = None

    @property
    def short(self) -> str:
        return self.sha[:7]


def resolve(
    repo: Repository,
    service: ServiceSettings,
    environment: str,
    requested: str | None,
    running: str | None,
    image_exists: Callable[[str], bool],
) -> Resolution:
    """Choose and check the target commit (I/O through `repo` and `image_exists`)."""
    if requested and requested.strip():
        sha = normalize_sha(requested)
        commit = repo_api.get_commit(repo, sha)
        if not repo_api.contains(repo, service.branch, commit.sha):
            raise NotOnBranchError(
                f"commit {commit.sha[:7]} is not on branch {service.branch} of {service.repository}",
                hint=f"roll back only to a commit that was merged into {service.branch}",
            )
        if running and commit.sha == running:
            raise AlreadyRunningError(
                f"{commit.sha[:7]} is already the version running in {environment}: nothing to roll back",
                hint="give an older SHA, or leave the SHA empty to return to the last known good version",
            )
        return Resolution(commit.sha, commit.title, running, "given")

    if not running:
        raise ShaError(
            f"cannot tell which version runs in {environment}: no successful deployment is recorded in GitHub",
            hint="give the SHA to return to explicitly",
        )
    healthy = repo_api.healthy_shas(repo, environment)
    candidates = last_known_good_candidates(repo_api.history(repo, running), running, healthy)
    chosen = repo_api.first_existing(candidates, image_exists)
    if chosen:
        commit = repo_api.get_commit(repo, chosen)
        return Resolution(commit.sha, commit.title, running, "last known good")

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
    return Resolution(parent.sha, parent.title, running, "first parent", warning)


@task(name="resolve-sha", cache_policy=RUN_ONCE, persist_result=True, timeout_seconds=180)
def resolve_sha(config: RunbookConfig, service_name: str, environment: str, requested: str | None) -> Resolution:
    """Resolve the commit SHA to roll back to, and say how it was chosen."""
    logger = get_run_logger()
    service = config.service(service_name)
    repo = repo_api.connect(config.github, service.repository)
    target = build_target(config, service_name, environment)
    running = target.current_version()
    with registry_client(config) as registry:
        resolution = resolve(
            repo, service, environment, requested, running, lambda sha: image_exists(registry, service, sha)
        )
    if resolution.running:
        resolution = replace(
            resolution,
            compare_url=repo_api.compare_url(config.github, service.repository, resolution.sha, resolution.running),
        )
    if resolution.warning:
        logger.warning(resolution.warning)
    logger.info(
        "rolling back %s/%s from %s to %s (%s): %s",
        service.repository,
        environment,
        (resolution.running or "unknown")[:7],
        resolution.short,
        resolution.source,
        resolution.title,
    )
    return resolution
