"""One rollback's settings and outside services: resolved and built once per run, handed to the tasks.

`Scope` is the slice of the configuration one rollback needs (the service, the environment, Slack), looked up
once: an unknown service or environment fails here, before anything. `Clients` builds each outside service
the first time a step needs it and keeps it for the rest of the run: one GitHub connection, one registry
client, one deploy target, one Slack poster. Tasks take these, never the whole configuration.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Self

from runbook import repository as repo_api
from runbook.config import EnvironmentSettings, RegistrySettings, RunbookConfig, ServiceSettings, SlackSettings
from runbook.service_images import registry_client
from runbook.slack import SlackPoster
from runbook.targets import DeployTarget
from runbook.targets.factory import build_target

if TYPE_CHECKING:
    from github.Repository import Repository

    from runbook.registry import RegistryClient


@dataclass(frozen=True)
class Scope:
    """One service in one environment, with the settings a rollback of it reads."""

    service_name: str
    environment: str
    service: ServiceSettings
    settings: EnvironmentSettings
    slack: SlackSettings
    web_url: str  # the repository's web page
    registries: tuple[RegistrySettings, ...] = ()  # the registries' settings (hosts, credentials' references)

    @classmethod
    def of(cls, config: RunbookConfig, service_name: str, environment: str) -> Scope:
        """The scope of `service_name` in `environment`; ConfigError naming the known ones when unknown."""
        settings = config.environment(service_name, environment)
        service = config.service(service_name)
        web_url = repo_api.web_url(config.github, service.repository)
        return cls(service_name, environment, service, settings, config.slack, web_url, tuple(config.registries))

    @property
    def channel(self) -> str:
        return self.service.slack.channel

    def compare_url(self, base: str, head: str) -> str:
        """The web page of the changes between two commits (built, not fetched)."""
        return f"{self.web_url}/compare/{base[:12]}...{head[:12]}"


class Clients:
    """The outside services of one rollback, each built when first needed and kept for the run; close() ends them."""

    def __init__(self, config: RunbookConfig, scope: Scope) -> None:
        self._config = config
        self.scope = scope
        self._closing = ExitStack()

    @cached_property
    def repo(self) -> Repository:
        """The service's GitHub repository (lazy: getting it costs no request)."""
        return repo_api.connect(self._config.github, self.scope.service.repository)

    @cached_property
    def registry(self) -> RegistryClient:
        """The registry client, with the configured credentials."""
        return self._closing.enter_context(registry_client(self._config))

    @cached_property
    def target(self) -> DeployTarget:
        """The environment's deploy target."""
        return build_target(self._config, self.scope.service_name, self.scope.environment)

    @cached_property
    def slack(self) -> SlackPoster:
        """Posts to the service's channel (bot token or incoming webhook)."""
        return SlackPoster(self.scope.slack, self.scope.channel)

    def close(self) -> None:
        self._closing.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
