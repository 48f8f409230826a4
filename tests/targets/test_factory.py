"""Which deploy target an environment gets: one factory per `deploy.type`, and an unknown type fails loudly."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from runbook.config import DeploySettings, RunbookConfig, parse_config
from runbook.errors import ConfigError
from runbook.targets.docker import DockerDeployTarget
from runbook.targets.docker_settings import DockerTarget
from runbook.targets.factory import TARGET_FACTORIES, build_target, target_factory
from runbook.targets.github_actions import GitHubActionsDeployTarget
from runbook.targets.webhook import WebhookDeployTarget
from runbook.targets.webhook_settings import WebhookTarget

DEPLOYS: dict[str, tuple[dict[str, Any], type]] = {
    "github-actions": ({"type": "github-actions"}, GitHubActionsDeployTarget),
    "docker": ({"type": "docker", "host": "tcp://127.0.0.1:2375", "container": "shop"}, DockerDeployTarget),
    "webhook": ({"type": "webhook", "url": "https://deploy.example.com/hooks/rollback"}, WebhookDeployTarget),
}


def _config(deploy: dict[str, Any]) -> RunbookConfig:
    environment = {"deploy": deploy, "health": {"probes": [{"url": "https://shop.example.com/health"}]}}
    service = {"repository": "acme/shop", "image": "ghcr.io/acme/shop", "environments": {"production": environment}}
    return parse_config({"services": {"shop": service}})


def _deploy_types() -> set[str]:
    """The `type` literal of every settings model in the configuration's deploy union."""
    union = typing.get_args(DeploySettings)[0]
    return {typing.get_args(model.model_fields["type"].annotation)[0] for model in typing.get_args(union)}


def test_every_deploy_type_of_the_configuration_has_a_factory() -> None:
    assert set(TARGET_FACTORIES) == _deploy_types() == set(DEPLOYS)


@pytest.mark.parametrize("kind", sorted(DEPLOYS))
def test_each_type_builds_its_target(kind: str) -> None:
    deploy, target_class = DEPLOYS[kind]
    target = build_target(_config(deploy), "shop", "production")
    assert type(target) is target_class
    assert target.name == kind


def test_an_unknown_type_fails_loudly_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        target_factory("ftp")
    assert caught.value.message == "unknown deploy type 'ftp': the known types are github-actions, docker, webhook"


def test_an_unknown_type_in_the_settings_is_never_built_as_another_target() -> None:
    # The configuration refuses an unknown type; settings made past validation must not fall back to Docker.
    config = _config(DEPLOYS["docker"][0])
    environment = config.environment("shop", "production")
    odd = environment.deploy.model_copy(update={"type": "kubernetes"})
    config.service("shop").environments["production"] = environment.model_copy(update={"deploy": odd})
    with pytest.raises(ConfigError, match=r"unknown deploy type 'kubernetes': the known types are github-actions, "):
        build_target(config, "shop", "production")


def test_the_configuration_refuses_an_unknown_type() -> None:
    with pytest.raises(ConfigError, match=r"deploy: Input tag 'ftp' found using 'type' does not match"):
        _config({"type": "ftp"})


def test_settings_of_another_type_are_a_config_error() -> None:
    config = _config(DEPLOYS["webhook"][0])
    assert isinstance(config.deploy_settings("shop", "production", WebhookTarget), WebhookTarget)
    with pytest.raises(ConfigError, match=r"deploy is of type 'webhook', not the settings of a DockerTarget"):
        config.deploy_settings("shop", "production", DockerTarget)
