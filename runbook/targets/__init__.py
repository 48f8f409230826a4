"""Deploy targets: one module each, all behind `DeployTarget`; `build_target` picks the configured one."""

from __future__ import annotations

from runbook import repository as repo_api
from runbook.config import GitHubActionsTarget, RunbookConfig, WebhookTarget
from runbook.service_images import insecure_registries, registry_credentials
from runbook.targets.base import DeployRequest, DeployResult, DeployTarget
from runbook.targets.docker import DockerDeployTarget
from runbook.targets.github_actions import GitHubActionsDeployTarget
from runbook.targets.webhook import WebhookDeployTarget

__all__ = ["DeployRequest", "DeployResult", "DeployTarget", "build_target"]


def build_target(config: RunbookConfig, service_name: str, environment: str) -> DeployTarget:
    """The deploy target configured for one environment of a service."""
    service = config.service(service_name)
    settings = config.environment(service_name, environment).deploy
    if isinstance(settings, GitHubActionsTarget):
        repo = repo_api.connect(config.github, service.repository)
        runs_url = f"{repo_api.web_url(config.github, service.repository)}/actions/workflows/{settings.workflow}"
        return GitHubActionsDeployTarget(repo, settings, service.branch, environment, runs_url)
    if isinstance(settings, WebhookTarget):
        return WebhookDeployTarget(settings)
    return DockerDeployTarget(
        settings, registry_credentials=registry_credentials(config), insecure_registries=insecure_registries(config)
    )
