"""Deploy targets: one module each, all behind `DeployTarget`."""

from __future__ import annotations

from github.Repository import Repository

from runbook.config import EnvironmentSettings, ServiceSettings
from runbook.targets.base import DeployRequest, DeployResult, DeployTarget
from runbook.targets.github_actions import GitHubActionsDeployTarget

__all__ = ["DeployRequest", "DeployResult", "DeployTarget", "build_target"]


def build_target(
    repo: Repository, service: ServiceSettings, environment: str, settings: EnvironmentSettings
) -> DeployTarget:
    """The deploy target configured for one environment."""
    return GitHubActionsDeployTarget(repo, settings.deploy, service.branch, environment)
