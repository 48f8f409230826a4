"""The runbook's configuration: one YAML file, validated once, secrets only by reference.

A file looks like `runbook.example.yaml`. `load_config(path)` parses and validates it and raises
`ConfigError` with one line per problem, each naming the key (`services.shop.environments.production.
deploy.type`) and what is wrong with it. Secrets (GitHub token, Slack token, registry passwords) are
`SecretRef`s: the name of an environment variable or of a Prefect Secret block, read only when used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from runbook.errors import ConfigError
from runbook.messages import Language
from runbook.settings_base import (
    MAX_INTERVAL_SECONDS,
    MAX_REQUEST_SECONDS,
    MAX_WAIT_SECONDS,
    Settings,
    UrlStr,
    dotted_path,
    sha_path,
)

# Parts of the configuration kept beside the code that uses them; `X as X`: still importable from here.
from runbook.settings_base import SecretRef as SecretRef
from runbook.targets.docker_settings import DockerTarget as DockerTarget
from runbook.targets.github_actions_settings import GitHubActionsTarget as GitHubActionsTarget
from runbook.targets.webhook_settings import WebhookTarget as WebhookTarget
from runbook.verification_settings import MetricCheck as MetricCheck
from runbook.verification_settings import SmokeCheck as SmokeCheck

DEFAULT_CONFIG_PATH = "runbook.yaml"
CONFIG_ENV_VAR = "RUNBOOK_CONFIG"

_NAME = r"^[a-z0-9][a-z0-9-]*$"
_T = TypeVar("_T")


def _named(value: dict[str, _T], kind: str) -> dict[str, _T]:
    """`value` when every key is a valid name (also a Prefect tag and artifact key part); else a ValueError."""
    for name in value:
        if not re.fullmatch(_NAME, name):
            raise ValueError(f"{kind} name {name!r} must be lowercase letters, digits and dashes")
    return value


def _ordering(services: dict[str, ServiceSettings]) -> None:
    """Every `roll_back_after` names another configured service, without a cycle; else a ValueError."""
    for name, service in services.items():
        for before in service.roll_back_after:
            if before not in services or before == name:
                raise ValueError(f"{name}.roll_back_after: {before!r} is not another configured service")
    for name in services:
        seen: list[str] = [name]
        waiting = list(services[name].roll_back_after)
        while waiting:
            before = waiting.pop()
            if before == name:
                raise ValueError(f"{name}.roll_back_after: a cycle ({' -> '.join([*seen, name])})")
            if before not in seen:
                seen.append(before)
                waiting.extend(services[before].roll_back_after)


_TAG_FIELDS = {"sha", "short_sha"}
_REGISTRY_HOST = re.compile(r"([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


_Model = Settings


MIN_ALERT_TOKEN_LENGTH = 16


def check_alert_token(token: str, where: str) -> None:
    """Refuse an alert token that is empty or short enough to guess; the message says where it was read, not it."""
    if not token.strip():
        raise ConfigError("the alert token is empty", hint=f"set a long random value in {where}")
    if len(token.strip()) < MIN_ALERT_TOKEN_LENGTH:
        raise ConfigError(
            f"alerts.token: the token in {where} is shorter than {MIN_ALERT_TOKEN_LENGTH} characters",
            hint="set a long random value there, e.g. the output of `openssl rand -hex 32`",
        )


class GitHubSettings(_Model):
    """How to reach GitHub (or GitHub Enterprise, by base URL)."""

    base_url: UrlStr = "https://api.github.com"
    token: SecretRef | None = None
    timeout_seconds: float = Field(default=15.0, gt=0, le=MAX_REQUEST_SECONDS)


class SlackSettings(_Model):
    """How to reach Slack and what to say there."""

    base_url: UrlStr = "https://slack.com/api/"
    token: SecretRef | None = Field(default=None, description="bot token (chat:write): threads and status updates")
    webhook_url: SecretRef | None = Field(
        default=None, description="incoming webhook, used when no bot token is set: no thread, no updates"
    )
    language: Language = "fr"
    timeout_seconds: float = Field(
        default=5.0, gt=0, le=MAX_REQUEST_SECONDS, description="one Slack call; a call that times out is tried again"
    )
    delivery_seconds: float = Field(
        default=60.0,
        ge=0,
        le=MAX_INTERVAL_SECONDS,
        description="after a rollback ends, how long its messages Slack has not taken yet are still tried",
    )
    progress_seconds: float = Field(
        default=60.0,
        ge=0,
        le=MAX_INTERVAL_SECONDS,
        description="a long step (deploy, health, error rate) shows how far it is in the root's status once it has "
        "lasted this long, then at most this often; 0: never",
    )


class RegistrySettings(_Model):
    """Credentials and transport for one registry host (`ghcr.io`, `127.0.0.1:5000`)."""

    host: str
    username: str | None = None
    password: SecretRef | None = None
    insecure: bool = False

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _REGISTRY_HOST.fullmatch(value):
            raise ValueError(
                "must be a registry host such as ghcr.io or 127.0.0.1:5000, without a scheme or path "
                "(insecure: true for plain HTTP)"
            )
        return value

    @model_validator(mode="after")
    def _pair(self) -> RegistrySettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both 'username' and 'password', or neither (anonymous)")
        return self


_DeployKind = TypeVar("_DeployKind", GitHubActionsTarget, DockerTarget, WebhookTarget)

DeploySettings = Annotated[GitHubActionsTarget | DockerTarget | WebhookTarget, Field(discriminator="type")]
"""Where and how an environment is deployed: one settings model per deploy target, chosen by `type`."""


class Probe(_Model):
    """One HTTP health endpoint and what a healthy answer looks like.

    `contains` is plain text, so it depends on how the service spaces its JSON (`{"status": "ok"}` does not
    contain `"status":"ok"`); `json_field` (with `equals`) reads the parsed answer instead.
    """

    url: UrlStr
    name: str | None = None
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: int = Field(default=200, ge=100, le=599)
    contains: str | None = Field(default=None, description="text the body must contain")
    json_field: str | None = Field(
        default=None, description="dotted path in the JSON answer that must be present and not null: 'status'"
    )
    # bool first: in pydantic's smart mode each value keeps its YAML type (ok: text, 200: a number, true: a bool).
    equals: bool | int | float | str | None = Field(
        default=None, description='the value `json_field` must have, compared with its JSON type (200 is not "200")'
    )

    @field_validator("json_field")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else dotted_path(value, "'status' or 'checks.db.status'")

    @model_validator(mode="after")
    def _coherent(self) -> Probe:
        if self.equals is not None and self.json_field is None:
            raise ValueError("'equals' needs 'json_field', the field of the JSON answer it compares")
        if self.method == "HEAD" and (self.contains is not None or self.json_field is not None):
            raise ValueError("a HEAD answer has no body: drop 'contains'/'json_field' or use GET")
        return self

    @property
    def label(self) -> str:
        return self.name or self.url


class HealthSettings(_Model):
    """When the service counts as healthy again."""

    probes: list[Probe] = Field(min_length=1)
    consecutive_successes: int = Field(default=3, ge=1)
    interval_seconds: float = Field(default=1.0, ge=0, le=MAX_INTERVAL_SECONDS)
    probe_timeout_seconds: float = Field(default=5.0, gt=0, le=MAX_REQUEST_SECONDS)
    deadline_seconds: float = Field(default=300.0, gt=0, le=MAX_WAIT_SECONDS)


class VersionProbe(_Model):
    """A GET of the service that tells which commit it runs: a JSON field or a response header."""

    url: UrlStr
    json_field: str | None = Field(default=None, description="dotted path of the SHA in the JSON answer; default sha")
    header: str | None = Field(default=None, description="or a response header holding the SHA, e.g. X-Version")
    timeout_seconds: float = Field(default=3.0, gt=0, le=30)

    @field_validator("json_field")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else sha_path(value)

    @model_validator(mode="after")
    def _one_place(self) -> VersionProbe:
        if self.json_field is not None and self.header is not None:
            raise ValueError("give 'json_field' or 'header', not both")
        return self


class ScheduleSettings(_Model):
    """When rehearsals run (cron, in `timezone`, UTC by default) and when their report is posted in Slack."""

    cron: str = "0 10 * * 1"
    timezone: str = "UTC"
    notify: Literal["on-problem", "always", "never"] = Field(
        default="on-problem",
        description="when the report goes to the service's Slack channel: only when not ready, every time, or never",
    )


class EnvironmentSettings(_Model):
    """One environment of a service: where it is deployed and how it is checked."""

    deploy: DeploySettings
    health: HealthSettings
    url: UrlStr | None = Field(default=None, description="public URL, linked in messages")
    metric: MetricCheck | None = Field(default=None, description="error-rate check after the probes (Prometheus)")
    smoke: list[SmokeCheck] = Field(default_factory=list, description="key features checked once healthy")
    version_probe: VersionProbe | None = Field(
        default=None, description="asks the service which commit runs, when the deploy target cannot tell"
    )
    staging: bool = Field(default=False, description="rehearsals really roll back and forward here (drill)")
    rehearsal: ScheduleSettings | None = Field(default_factory=ScheduleSettings, description="null: no rehearsal")


class SlackRoute(_Model):
    """Where a service's incidents are told and who is called."""

    channel: str = "#incidents-prod"
    mentions: list[str] = Field(default_factory=list, description="Slack ids: <@U123>, <!subteam^S123>")


class ServiceSettings(_Model):
    """One service: its code, its image and its environments."""

    repository: str
    branch: str = "main"
    image: str
    tag_format: str = "{sha}"
    require_platform: str | None = Field(
        default=None, description="e.g. linux/amd64: a multi-platform image (index) must include it"
    )
    slack: SlackRoute = Field(default_factory=SlackRoute)
    roll_back_after: list[str] = Field(
        default_factory=list,
        description="in an incident of several services, the services that must be rolled back (and healthy) "
        "before this one, e.g. [api] for a web front end; one that did not recover leaves this one as it is",
    )
    environments: dict[str, EnvironmentSettings] = Field(min_length=1)

    @field_validator("repository")
    @classmethod
    def _owner_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", value):
            raise ValueError("must be 'owner/name', e.g. 'acme/shop'")
        return value

    @field_validator("tag_format")
    @classmethod
    def _tag_format(cls, value: str) -> str:
        fields = set(re.findall(r"{(\w*)}", value))
        if not fields & _TAG_FIELDS:
            raise ValueError("must contain {sha} or {short_sha}, e.g. '{sha}' or 'sha-{short_sha}'")
        if fields - _TAG_FIELDS:
            raise ValueError(f"unknown field(s) {sorted(fields - _TAG_FIELDS)}; only {{sha}} and {{short_sha}}")
        return value

    @field_validator("environments")
    @classmethod
    def _env_names(cls, value: dict[str, EnvironmentSettings]) -> dict[str, EnvironmentSettings]:
        return _named(value, "environment")

    def tag_for(self, sha: str) -> str:
        """The image tag built for a full commit SHA."""
        return self.tag_format.format(sha=sha, short_sha=sha[:7])


class AlertSettings(_Model):
    """The alert endpoint: who may call it, and how alert labels map to a service and environment."""

    token: SecretRef = Field(description="bearer token Alertmanager/Grafana must send")
    service_label: str = "service"
    environment_label: str = "environment"
    default_environment: str | None = Field(default=None, description="when the alert has no environment label")
    match: dict[str, str] = Field(
        default_factory=lambda: {"rollback": "auto"},
        description="labels an alert must carry (exact values) to start a rollback",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=64 * 1024,
        le=128 * 1024 * 1024,
        description="largest webhook body accepted (a bigger one is a 413, which Alertmanager does not retry): "
        "an Alertmanager group of 5000 alerts with a dozen labels and four annotations each is about 5.7 MB",
    )
    hold_minutes: int = Field(
        default=30,
        ge=0,
        le=1440,
        description="after an automatic rollback, alerts for that service and environment that started before it "
        "ended, or up to this many minutes after, start no other one: its Slack thread says a person decides",
    )


class ReadyTargetSettings(_Model):
    """The ready rollback target `runbook serve` keeps per service and environment (runbook/ready.py)."""

    enabled: bool = Field(
        default=True,
        description="resolve each service's rollback target ahead of an incident (last known good, image digest, "
        "deploy target preflight): an alert then only checks the running version is unchanged, and deploys",
    )
    check_seconds: float = Field(
        default=15,
        ge=1,
        le=3600,
        description="how often `serve` checks each running version (a change: prepared again at once)",
    )
    max_age_seconds: float = Field(
        default=900,
        ge=10,
        le=86400,
        description="older than this, a ready target is not used (the run resolves in full); `serve` prepares it "
        "again at half this age",
    )


class RunbookConfig(_Model):
    """The whole file."""

    github: GitHubSettings = Field(default_factory=GitHubSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    registries: list[RegistrySettings] = Field(default_factory=list)
    alerts: AlertSettings | None = None
    ready_target: ReadyTargetSettings = Field(default_factory=ReadyTargetSettings)
    services: dict[str, ServiceSettings] = Field(min_length=1)

    @field_validator("services")
    @classmethod
    def _service_names(cls, value: dict[str, ServiceSettings]) -> dict[str, ServiceSettings]:
        _ordering(value)
        return _named(value, "service")

    def service(self, name: str) -> ServiceSettings:
        """A configured service, or a ConfigError listing the known ones."""
        try:
            return self.services[name]
        except KeyError:
            raise ConfigError(
                f"unknown service {name!r}",
                hint=f"choose one of {sorted(self.services)} or add it to the configuration",
            ) from None

    def environment(self, service: str, environment: str) -> EnvironmentSettings:
        """A configured environment of a service, or a ConfigError listing the known ones."""
        envs = self.service(service).environments
        try:
            return envs[environment]
        except KeyError:
            raise ConfigError(
                f"unknown environment {environment!r} for service {service!r}",
                hint=f"choose one of {sorted(envs)} or add it under services.{service}.environments",
            ) from None

    def deploy_settings(self, service: str, environment: str, kind: type[_DeployKind]) -> _DeployKind:
        """The deploy settings of an environment, which the caller expects to be of `kind` (else a ConfigError)."""
        settings = self.environment(service, environment).deploy
        if not isinstance(settings, kind):
            raise ConfigError(
                f"services.{service}.environments.{environment}.deploy is of type {settings.type!r}, "
                f"not the settings of a {kind.__name__}",
                hint="build the deploy target with runbook.targets.build_target, which picks it by type",
            )
        return settings

    def registry(self, host: str) -> RegistrySettings | None:
        """The settings for a registry host, if any."""
        return next((r for r in self.registries if r.host == host), None)


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        # pydantic names the union member it tried (e.g. `github-actions`); the key is clearer without it.
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {key or '(top level)'}: {message}")
    return f"{source} is invalid:\n" + "\n".join(lines)


def parse_config(data: Any, *, source: str = "configuration") -> RunbookConfig:
    """Validate already-parsed YAML data."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is invalid: the top level must be a mapping with a 'services' key")
    try:
        return RunbookConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The file to read: the argument, else $RUNBOOK_CONFIG, else ./runbook.yaml."""
    return Path(path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


@contextmanager
def using_config(path: str | os.PathLike[str]) -> Iterator[Path]:
    """$RUNBOOK_CONFIG set to `path` (absolute) for the duration: the file the flows of this process read.

    The flows take no configuration parameter (whoever creates a run must not choose the URLs and tokens it
    uses): a process picks its configuration through its environment, as `runbook serve` and a worker do.
    """
    file = Path(path).resolve()
    before = os.environ.get(CONFIG_ENV_VAR)
    os.environ[CONFIG_ENV_VAR] = str(file)
    try:
        yield file
    finally:
        if before is None:
            os.environ.pop(CONFIG_ENV_VAR, None)
        else:
            os.environ[CONFIG_ENV_VAR] = before


def load_config(path: str | os.PathLike[str] | None = None) -> RunbookConfig:
    """Read and validate the configuration file."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the configuration file {file}: {exc.strerror}",
            hint=f"pass --config PATH or set {CONFIG_ENV_VAR}; runbook.example.yaml shows the format",
        ) from None
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader, without aliases
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {_yaml_problem(exc)}") from None
    return parse_config(data, source=str(file))


class _NoAliasLoader(yaml.SafeLoader):
    """`yaml.safe_load`, refusing anchors and aliases: a few lines of nested aliases expand to gigabytes."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML anchors and aliases (&name, *name) are not allowed in the configuration: write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without the excerpt of the file PyYAML quotes (it may hold a pasted secret)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem or exc.context}"
    return str(exc)
