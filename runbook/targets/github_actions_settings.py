"""The settings of the github-actions deploy target (`deploy.type: github-actions`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runbook.settings_base import MAX_INTERVAL_SECONDS, MAX_WAIT_SECONDS, Settings


class GitHubActionsTarget(Settings):
    """Deploy by dispatching the application's `rollback-production` workflow, as the seed does by hand."""

    type: Literal["github-actions"]
    workflow: str = "rollback-production.yml"
    ref: str | None = Field(default=None, description="branch the workflow runs from; default the service branch")
    sha_input: str = "sha"
    digest_input: str | None = Field(
        default="digest", description="input that carries the verified image digest; null if the workflow has none"
    )
    rollback_id_input: str | None = Field(
        default="rollback_id",
        description="input carrying the rollback id, shown in the run-name so a run can be found again; null if none",
    )
    poll_interval_seconds: float = Field(default=5.0, gt=0, le=MAX_INTERVAL_SECONDS)
    timeout_seconds: float = Field(default=1800.0, gt=0, le=MAX_WAIT_SECONDS)
    lookup_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="after a dispatch whose answer was lost: how long to look for its run before saying none exists",
    )
    unreadable_status_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="how long the workflow run's status may stay unreadable before the health check decides",
    )
