"""What every deploy target offers: read the running version, check access, deploy one image."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
    rollback_id: str  # unique per rollback, the same on a Retry: the dispatch's run-name, the webhook's key
    # Set when resuming a rollback recorded before this run (a Retry, or a run that died): when its intent was
    # recorded. The target finds out whether that deploy started before acting.
    resume_since: datetime | None = None


@dataclass(frozen=True)
class DeployResult:
    """What the target did, with a link a person can open."""

    target: str
    skipped: bool
    detail: str
    link: str | None = None
    previous: str | None = None  # what the target replaced (e.g. the old container), for finish()
    confirmed: bool = True  # False: started, but the target's own status could not be read; health decides


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
