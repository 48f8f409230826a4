"""Which deploy target an environment uses: one factory per `deploy.type`, each exposed by its target's module."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from runbook.config import RunbookConfig
from runbook.errors import ConfigError
from runbook.targets import docker, github_actions, webhook
from runbook.targets.base import DeployTarget

TargetFactory = Callable[[RunbookConfig, str, str], DeployTarget]
"""`(config, service_name, environment) -> DeployTarget`."""

TARGET_FACTORIES: Mapping[str, TargetFactory] = {
    "github-actions": github_actions.build,
    "docker": docker.build,
    "webhook": webhook.build,
}
"""The factory of each deploy target, by the `type` of its settings (`deploy.type` in the configuration)."""


def target_factory(kind: str) -> TargetFactory:
    """The factory for a `deploy.type`; a ConfigError naming it and the known ones when there is none."""
    try:
        return TARGET_FACTORIES[kind]
    except KeyError:
        known = ", ".join(TARGET_FACTORIES)
        raise ConfigError(
            f"unknown deploy type {kind!r}: the known types are {known}",
            hint="set deploy.type to one of them in the configuration",
        ) from None


def build_target(config: RunbookConfig, service_name: str, environment: str) -> DeployTarget:
    """The deploy target configured for one environment of a service."""
    kind = config.environment(service_name, environment).deploy.type
    return target_factory(kind)(config, service_name, environment)
