"""The errors a rollback can end with, each saying what was wrong and what to do next.

    RunbookError
    ├── ConfigError            the configuration file or a parameter is invalid
    ├── SecretError            a referenced secret cannot be read
    ├── ShaError               the commit to return to is unusable
    │   ├── InvalidShaError        not 7-40 hex characters
    │   ├── CommitNotFoundError    unknown to the repository
    │   ├── NotOnBranchError       not on the configured branch
    │   └── AlreadyRunningError    it is the version running now
    ├── GitHubError            GitHub answered with an error or could not be reached
    ├── RegistryError          the registry answered with an error or could not be reached
    │   └── ImageNotFoundError     no image with that tag
    ├── DeployError            the deploy target refused, failed or timed out
    ├── HealthCheckError       the service did not become healthy in time
    └── ApprovalError          a person rejected the rollback, or nobody answered

Every message names the thing checked and the next action; none carries a secret.
"""

from __future__ import annotations


class RunbookError(Exception):
    """Base of every error this project raises on purpose."""

    step: str = "rollback"

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}: {hint}" if hint else message)


class ConfigError(RunbookError):
    step = "configuration"


class SecretError(RunbookError):
    step = "configuration"


class ShaError(RunbookError):
    step = "resolve-sha"


class InvalidShaError(ShaError):
    pass


class CommitNotFoundError(ShaError):
    pass


class NotOnBranchError(ShaError):
    pass


class AlreadyRunningError(ShaError):
    pass


class GitHubError(RunbookError):
    step = "resolve-sha"


class RegistryError(RunbookError):
    step = "verify-image"


class ImageNotFoundError(RegistryError):
    pass


class DeployError(RunbookError):
    """`changed`: False when the target surely did nothing (refused, never reached), else True or None (unknown)."""

    step = "deploy"

    def __init__(self, message: str, *, hint: str = "", changed: bool | None = None) -> None:
        super().__init__(message, hint=hint)
        self.changed = changed


class HealthCheckError(RunbookError):
    step = "health-check"


class ApprovalError(RunbookError):
    step = "approval"
