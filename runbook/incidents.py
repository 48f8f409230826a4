"""One incident, several services: who is rolled back, and who waits for whom. Pure.

An incident names (service, environment) pairs (`IncidentService`). `plan()` checks them against the
configuration (an unknown one fails before anything, listing the known ones) and says, for each, the other
members that must be rolled back (and healthy) first: a service's `roll_back_after`, followed through services
the incident does not name, within the same environment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runbook.config import RunbookConfig
from runbook.errors import ConfigError

#: The most services one incident rolls back (each one is a rollback run in the incident's process).
MAX_SERVICES = 50


class IncidentService(BaseModel):
    """One service of an incident, in one environment (the form's row; the alert endpoint's target)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str = Field(description="a configured service")
    environment: str = Field(description="its environment, e.g. production")

    @property
    def key(self) -> str:
        """`service/environment`, as messages and the post-mortem name it."""
        return f"{self.service}/{self.environment}"


@dataclass(frozen=True)
class Plan:
    """The incident's members in the order given, and for each the keys of the members that go back first."""

    members: tuple[IncidentService, ...]
    first: Mapping[str, tuple[str, ...]]


def parse_services(raw: Sequence[Any]) -> list[IncidentService]:
    """The `services` parameter as given by the form, the API or the alert endpoint (dicts or models)."""
    members = []
    for item in raw:
        if isinstance(item, IncidentService):
            members.append(item)
        elif isinstance(item, Mapping):
            members.append(IncidentService.model_validate(dict(item)))
        else:
            raise ConfigError(
                f"incident service {item!r} is not a service and an environment",
                hint='give each as {"service": "api", "environment": "production"}',
            )
    return members


def plan(config: RunbookConfig, members: Sequence[IncidentService]) -> Plan:
    """The members checked against `config` (ConfigError naming the problem) and the order they go back in."""
    if not members:
        raise ConfigError("an incident needs at least one service", hint="name the services to roll back")
    if len(members) > MAX_SERVICES:
        raise ConfigError(
            f"an incident rolls back at most {MAX_SERVICES} services, {len(members)} were given",
            hint="split it into several incidents",
        )
    keys = [member.key for member in members]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigError(f"the incident names {', '.join(repeated)} twice", hint="name each service once")
    for member in members:
        config.environment(member.service, member.environment)  # unknown: ConfigError listing the known ones
    first = {member.key: _before(config, member, members) for member in members}
    return Plan(tuple(members), first)


def _before(config: RunbookConfig, member: IncidentService, members: Sequence[IncidentService]) -> tuple[str, ...]:
    """The members (same environment) that `member` waits for, through `roll_back_after` followed transitively."""
    present = {m.service for m in members if m.environment == member.environment}
    found: list[str] = []
    seen: set[str] = set()
    waiting = list(config.service(member.service).roll_back_after)
    while waiting:  # the configuration has no cycle (checked at load)
        service = waiting.pop(0)
        if service in seen:
            continue
        seen.add(service)
        if service in present:
            found.append(f"{service}/{member.environment}")
        waiting.extend(config.service(service).roll_back_after)
    return tuple(found)
