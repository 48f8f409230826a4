"""The errors the runbook raises on purpose, all in this one module, each saying what was wrong and what to do next.

    RunbookError
    ├── ConfigError                 the configuration file or a parameter is invalid
    ├── SecretError                 a referenced secret cannot be read
    ├── ShaError                    the commit to return to is unusable
    │   ├── InvalidShaError             not 7-40 hex characters
    │   ├── CommitNotFoundError         unknown to the repository
    │   ├── NotOnBranchError            not on the configured branch
    │   └── AlreadyRunningError         it is the version running now
    ├── GitHubError                 GitHub answered with an error or could not be reached
    ├── RegistryError               the registry answered with an error or could not be reached
    │   └── ImageNotFoundError          no image with that tag
    ├── DeployError                 the deploy target refused, failed or timed out (`changed`: did it act?)
    ├── HealthCheckError            the service did not become healthy in time
    │   ├── MetricCheckError            the error-rate metric did not hold under its threshold (`report`)
    │   │   └── PrometheusUnavailableError  Prometheus could not be reached or is not ready
    │   └── SmokeCheckError             a key-feature (smoke) check failed (`report`)
    ├── ApprovalError               a person rejected the rollback, or nobody answered
    ├── RollbackInProgressError     another rollback of the same service and environment holds the slot
    ├── HoldUnknownError            an alert's run cannot read the last automatic rollback: it does not go on
    └── LaunchError                 the alert endpoint could not start a rollback (Prefect API down, ...)

    VersionUnreadableError          (not a RunbookError) a version endpoint gave no usable commit SHA; never
                                    escapes: callers fall through to the next source of the running version

Every message names the thing checked and the next action (`hint`); none carries a secret. Which step failed is
the run journal's business (runbook/journal.py), not the error's: the same error can come from several steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.health import MetricReport, SmokeReport


class RunbookError(Exception):
    """Base of every error this project raises on purpose: `message`, and `hint` (what to do next)."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}: {hint}" if hint else message)


class ConfigError(RunbookError):
    """The configuration file or a parameter is invalid (the message names the key)."""


class SecretError(RunbookError):
    """A referenced secret (environment variable, file, Prefect Secret block) cannot be read."""


class ShaError(RunbookError):
    """The commit to return to is unusable."""


class InvalidShaError(ShaError):
    """Not 7 to 40 hexadecimal characters."""


class CommitNotFoundError(ShaError):
    """Unknown to the repository."""


class NotOnBranchError(ShaError):
    """Not on the configured branch."""


class AlreadyRunningError(ShaError):
    """It is the version running now."""


class GitHubError(RunbookError):
    """GitHub answered with an error or could not be reached."""


class RegistryError(RunbookError):
    """The registry answered with an error or could not be reached."""


class ImageNotFoundError(RegistryError):
    """No image with that tag."""


class DeployError(RunbookError):
    """`changed`: False when the target surely did nothing (refused, never reached), else True or None (unknown)."""

    def __init__(self, message: str, *, hint: str = "", changed: bool | None = None) -> None:
        super().__init__(message, hint=hint)
        self.changed = changed


class HealthCheckError(RunbookError):
    """The service did not become healthy in time."""


class MetricCheckError(HealthCheckError):
    """The metric did not hold under its threshold in time, or Prometheus refused the query."""

    def __init__(self, message: str, *, hint: str = "", report: MetricReport | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report


class PrometheusUnavailableError(MetricCheckError):
    """Prometheus could not be reached or is not ready (retried until the deadline)."""


class SmokeCheckError(HealthCheckError):
    """At least one smoke check failed; `report` holds every result."""

    def __init__(self, message: str, *, hint: str = "", report: SmokeReport | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report


class ApprovalError(RunbookError):
    """A person rejected the rollback, or nobody answered in time."""


class RollbackInProgressError(RunbookError):
    """Another rollback of the same service and environment holds the slot."""


class HoldUnknownError(RunbookError):
    """An alert's run cannot read the record of the last automatic rollback: it does not roll back blindly."""


class LaunchError(RunbookError):
    """A rollback could not be started (the Prefect API is down, the deployment is missing...)."""


class VersionUnreadableError(Exception):
    """A version endpoint gave no usable commit SHA (never escapes: the callers fall through to the next source)."""
