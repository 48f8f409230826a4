"""The ready rollback target: a service's way back, resolved and checked before the incident.

For each service and environment, `runbook serve` keeps what a rollback would choose right now: the version
running, the last known good one to return to, its image's digest (verified in the registry) and the deploy
target's preflight. It is a Prefect Variable `ready-target-<service>-<environment>` (the UI's Variables page
shows it, with `prepared_at`), prepared again when the running version changes, when it reaches half its
maximum age, and after every rollback.

A rollback run with no SHA given uses it only after checking that it still holds: made within the maximum age
(`ready_target.max_age_seconds`), and the version running now (read afresh, from the same sources and in the
same order as the full resolution) is the one it was prepared for. Otherwise the run resolves in full. The
ready path skips none of the full path's checks: each was made by the same code when the target was prepared,
and the one that can change in a moment (which version runs) is made again.

The decisions are pure functions over plain values; reading and writing the Variable is at the edge.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from pydantic import BaseModel

#: Longest warning kept in the record (a Variable's value is at most 5,000 characters).
_WARNING_MAX = 1000


@dataclass(frozen=True)
class ReadyTarget:
    """What a rollback of one service in one environment would do, prepared at `prepared_at`."""

    service: str
    environment: str
    running: str  # the version running when it was prepared
    running_source: str  # where that was read ("version probe", "docker container label"...)
    sha: str  # the version to return to
    title: str
    source: str  # how it was chosen: "last known good", "first parent"
    image: str  # registry/name:tag
    digest: str  # verified in the registry when prepared
    media_type: str
    preflight: str  # the deploy target's answer to its preflight
    prepared_at: datetime
    basis: str  # the configuration it was prepared with (`basis_of`): another one makes it unusable
    warning: str | None = None

    @property
    def short(self) -> str:
        return self.sha[:7]

    def age(self, now: datetime) -> float:
        """Seconds since it was prepared."""
        return (now - self.prepared_at).total_seconds()

    def to_value(self) -> dict[str, Any]:
        """The Variable's JSON value."""
        value = asdict(self)
        value["prepared_at"] = self.prepared_at.isoformat()
        if self.warning and len(self.warning) > _WARNING_MAX:
            value["warning"] = self.warning[: _WARNING_MAX - 1] + "…"
        return value

    @classmethod
    def from_value(cls, value: Any, service: str, environment: str) -> ReadyTarget | None:
        """The record a Variable holds, or None when it is not a ready target of this service and environment."""
        if not isinstance(value, dict):
            return None
        try:
            fields = dict(value)
            fields["prepared_at"] = datetime.fromisoformat(str(fields["prepared_at"]))
            ready = cls(**fields)
        except (KeyError, TypeError, ValueError):
            return None
        if (ready.service, ready.environment) != (service, environment) or ready.prepared_at.tzinfo is None:
            return None  # names are joined with dashes: `a-b`+`c` and `a`+`b-c` share a Variable
        return ready


def variable_name(service: str, environment: str) -> str:
    """`ready-target-<service>-<environment>` (Prefect Variable names: a-z, 0-9, dashes, underscores)."""
    return re.sub(r"[^a-z0-9_-]", "-", f"ready-target-{service}-{environment}".lower())


def basis_of(repository_url: str, *settings: BaseModel) -> str:
    """A digest of what a ready target is prepared with: the repository's address, the service's, the environment's
    and the registries' settings.

    A ready target prepared under other settings (another image repository, registry, deploy target...) is not
    used: what it verified is not what this configuration would deploy.
    """
    dumped = json.dumps([repository_url, *(s.model_dump(mode="json") for s in settings)], sort_keys=True, default=str)
    return hashlib.sha256(dumped.encode()).hexdigest()[:32]


def unusable(ready: ReadyTarget | None, running: str | None, now: datetime, max_age: float, basis: str) -> str | None:
    """Why the ready target cannot be used now (None: it can): absent, too old, or prepared for another version."""
    if ready is None:
        return "no ready target is kept for this service and environment"
    if ready.basis != basis:
        return "the ready target was prepared under another configuration"
    age = ready.age(now)
    if age > max_age:
        return f"the ready target is {age:.0f} s old (more than {max_age:.0f} s)"
    if age < -60:
        return f"the ready target says it was prepared in the future ({ready.prepared_at.isoformat()})"
    if running is None:
        return "which version runs now cannot be told"
    if running != ready.running:
        return f"{running[:7]} runs now, not {ready.running[:7]} as when the ready target was prepared"
    return None


def needs_preparing(ready: ReadyTarget | None, running: str | None, now: datetime, max_age: float, basis: str) -> bool:
    """Whether `serve` should prepare the target again: unusable, or past half its maximum age."""
    return ready is None or unusable(ready, running, now, max_age, basis) is not None or ready.age(now) > max_age / 2


# --- the record in Prefect (I/O) ----------------------------------------------------------------------------


def read(client: SyncPrefectClient, service: str, environment: str) -> ReadyTarget | None:
    """The ready target kept for the service and environment, if any."""
    variable = client.read_variable_by_name(variable_name(service, environment))
    return None if variable is None else ReadyTarget.from_value(variable.value, service, environment)


def write(ready: ReadyTarget) -> None:
    """Keep `ready` (created, or replacing the one there); SQLite busy: tried again soon (prefect_calls)."""
    from runbook.prefect_calls import put_variable

    put_variable(variable_name(ready.service, ready.environment), ready.to_value(), ["runbook", "ready-target"])


def forget(client: SyncPrefectClient, service: str, environment: str) -> None:
    """Drop the ready target (it no longer holds and a new one could not be prepared)."""
    from prefect.exceptions import ObjectNotFound

    with suppress(ObjectNotFound):
        client.delete_variable_by_name(variable_name(service, environment))
