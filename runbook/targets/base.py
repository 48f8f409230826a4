"""What every deploy target offers: read the running version, check access, deploy one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DeployRequest:
    """Put this image (by digest) of this commit back in service."""

    service: str
    environment: str
    sha: str
    image: str
    digest: str
    reason: str
    run_id: str


@dataclass(frozen=True)
class DeployResult:
    """What the target did, with a link a person can open."""

    target: str
    skipped: bool
    detail: str
    link: str | None = None
    previous: str | None = None  # what the target replaced (e.g. the old container), for finish()


class DeployTarget(Protocol):
    """One way of putting a version in service (GitHub Actions, Docker, webhook...)."""

    name: str

    def current_version(self) -> str | None:
        """The commit SHA running now, when the target can tell; None when it cannot."""
        ...

    def preflight(self) -> str:
        """Check the target can be reached with the permissions a deploy needs; say what was checked."""
        ...

    def deploy(self, request: DeployRequest) -> DeployResult:
        """Deploy and wait until the target says it is done (or raise DeployError)."""
        ...

    def finish(self, result: DeployResult) -> str | None:
        """After the health check passed: clean up what deploy() kept for a way back; say what was done."""
        ...
