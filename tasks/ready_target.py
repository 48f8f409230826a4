"""The ready rollback target (runbook/ready.py): prepared with the full path's own checks, checked before use.

`prepare` runs exactly what a rollback's first steps run, the same code: the resolution of `resolve-sha`
(which version runs, the last known good one, its image in the registry), the image lookup of `verify-image`
(its digest), and the deploy target's preflight of a dry run. `check-ready-target` reads it back and reads
afresh which version runs, with `resolve-sha`'s own `find_running`: the target is used only when that version is
the one it was prepared for and it is recent enough.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from github.Repository import Repository
from prefect import get_run_logger, task
from prefect.client.orchestration import get_client

from runbook import ready as ready_store
from runbook.clients import Scope
from runbook.journal import utcnow
from runbook.ready import ReadyTarget
from runbook.registry import RegistryClient
from runbook.running import RunningVersion, find_running
from runbook.service_images import find_image
from runbook.targets import DeployTarget
from tasks.policy import NO_CACHE, run_once
from tasks.resolve_sha import Resolution, resolve_for
from tasks.verify_image import ImageCheck

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class ReadyCheck:
    """The ready target if it can be used now (else None, and why), and the running version read now."""

    ready: ReadyTarget | None
    running: RunningVersion
    why_not: str | None
    warnings: list[str] = field(default_factory=list)

    def resolution(self, scope: Scope) -> Resolution:
        """What `resolve-sha` would have said, from the ready target and the running version read now."""
        assert self.ready is not None
        ready, running = self.ready, self.running
        assert running.sha is not None
        return Resolution(
            ready.sha,
            ready.title,
            running.sha,
            ready.source,
            "; ".join([*self.warnings, *([ready.warning] if ready.warning else [])]) or None,
            compare_url=scope.compare_url(ready.sha, running.sha) if running.sha != ready.sha else None,
            running_source=running.source,
            running_authoritative=running.authoritative,
            running_deployment_id=running.deployment_id,
            running_from_target=running.from_target,
        )

    def image(self) -> ImageCheck:
        assert self.ready is not None
        return ImageCheck(self.ready.image, self.ready.digest, self.ready.media_type)


def prepare(
    scope: Scope,
    repo: Repository,
    target: DeployTarget,
    registry: RegistryClient,
    logger: Logger,
    current: RunningVersion | None = None,
) -> ReadyTarget:
    """Resolve the way back now, with the full path's checks (raises what they raise: nothing is kept then).

    `current`: the running version, when the caller has just read it (not read twice).
    """
    resolution = resolve_for(scope, repo, target, registry, None, logger, current)
    assert resolution.running is not None  # the full resolution refuses to choose without it
    manifest = find_image(registry, scope.service, resolution.sha)
    preflight = target.preflight()
    return ReadyTarget(
        service=scope.service_name,
        environment=scope.environment,
        running=resolution.running,
        running_source=resolution.running_source,
        sha=resolution.sha,
        title=resolution.title,
        source=resolution.source,
        image=manifest.image,
        digest=manifest.digest,
        media_type=manifest.media_type,
        preflight=preflight,
        prepared_at=utcnow(),
        basis=basis(scope),
        warning=resolution.warning,
    )


def basis(scope: Scope) -> str:
    """The settings a ready target of `scope` depends on (runbook.ready.basis_of)."""
    return ready_store.basis_of(scope.web_url, scope.service, scope.settings, *scope.registries)


@task(name="prepare-ready-target", cache_policy=NO_CACHE)
def prepare_ready_target(scope: Scope, repo: Repository, target: DeployTarget, registry: RegistryClient) -> str:
    """After a rollback: the next way back, prepared and kept now (the incident's next alert needs it)."""
    ready = prepare(scope, repo, target, registry, get_run_logger())
    ready_store.write(ready)
    return f"ready target: {ready.short} ({ready.source}) = {ready.digest}, {ready.running[:7]} running"


# Cached for the flow run, like `resolve-sha`: a Retry of a run that deployed must keep its choice (read again,
# the version it deployed runs now, and an older ready target prepared for it would lead further back).
@task(name="check-ready-target", cache_policy=run_once(exclude=("repo", "target")), persist_result=True)
def check_ready_target(scope: Scope, repo: Repository, target: DeployTarget, max_age: float) -> ReadyCheck:
    """The ready target, if it still holds: recent enough, and prepared for the version that runs now."""
    logger = get_run_logger()
    warnings: list[str] = []

    def warn(message: str) -> None:
        logger.warning(message)
        warnings.append(message)

    with get_client(sync_client=True) as client:
        ready = ready_store.read(client, scope.service_name, scope.environment)
    running = find_running(repo, scope.environment, scope.settings, target, warn)
    why_not = ready_store.unusable(ready, running.sha, utcnow(), max_age, basis(scope))
    if why_not is not None:
        logger.info("full resolution: %s", why_not)
        return ReadyCheck(None, running, why_not, warnings)
    return ReadyCheck(ready, running, None, warnings)
