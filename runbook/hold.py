"""One incident, at most one automatic rollback: the hold that follows an automatic rollback of a service.

When an alert-triggered run reaches its deploy step, it writes down who it is in a Prefect Variable
`last-automatic-rollback-<service>-<environment>` (`LastRollback`: the flow run, its link, the SHA rolled back
to, when the deploy started, the Slack thread); when it ended is its flow run's end, read from Prefect. A later
alert-triggered run of the same service and environment reads it once it holds the one-at-a-time slot
(runbook/rollback_slot.py): an alert that started before that rollback ended, or within `alerts.hold_minutes` after, is
*held* (`hold_reason`): no deploy, the rollback's thread is told that a person decides (once per alert group,
`held_groups`), and the run ends Cancelled. A run that failed before its deploy step wrote nothing, so it holds
nothing. Manual runs are never held; they say that a rollback just happened (`is_recent`). The alert endpoint
reads the same record to answer a group that was already told without creating a run.

The decisions are pure functions over plain values; reading and writing the Variable is at the edge.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

#: The rollback flow's own time limit: a record that never got its end (the run's process died) counts as
#: ended by then, so a crashed run cannot hold a service forever.
RUN_LIMIT = timedelta(hours=4)
#: How many alert groups one record remembers as told (a Variable's value is at most 5,000 characters).
_MAX_GROUPS = 50


@dataclass(frozen=True)
class LastRollback:
    """The last automatic rollback of one service in one environment that reached its deploy step."""

    service: str
    environment: str
    flow_run_id: str
    run_url: str | None
    to_sha: str
    deploy_started_at: datetime
    ended_at: datetime | None = None
    channel: str | None = None  # the Slack thread of that rollback (channel id and root ts), if it has one
    thread_ts: str | None = None
    held_groups: tuple[str, ...] = ()  # `group_id`s of alert groups already told that a person decides

    def to_value(self) -> dict[str, Any]:
        """The Variable's JSON value (without the end: its flow run's state tells it, see `with_end`)."""
        return {
            "service": self.service,
            "environment": self.environment,
            "flow_run_id": self.flow_run_id,
            "run_url": self.run_url,
            "to_sha": self.to_sha,
            "deploy_started_at": self.deploy_started_at.isoformat(),
            "channel": self.channel,
            "thread_ts": self.thread_ts,
            "held_groups": list(self.held_groups),
        }

    @classmethod
    def from_value(cls, value: Any, service: str, environment: str) -> LastRollback | None:
        """The record a Variable holds, or None when it is not one for this service and environment."""
        if not isinstance(value, dict):
            return None
        try:
            last = cls(
                service=str(value["service"]),
                environment=str(value["environment"]),
                flow_run_id=str(value["flow_run_id"]),
                run_url=value.get("run_url") or None,
                to_sha=str(value["to_sha"]),
                deploy_started_at=datetime.fromisoformat(value["deploy_started_at"]),
                channel=value.get("channel") or None,
                thread_ts=value.get("thread_ts") or None,
                held_groups=tuple(str(g) for g in value.get("held_groups") or ()),
            )
        except (KeyError, TypeError, ValueError):
            return None
        # Names are joined with dashes: `a-b`+`c` and `a`+`b-c` share a Variable; the record says whose it is.
        return last if (last.service, last.environment) == (service, environment) else None

    def told(self, group: str) -> LastRollback:
        """The record with `group` remembered as told."""
        if group in self.held_groups:
            return self
        return replace(self, held_groups=(*self.held_groups, group)[-_MAX_GROUPS:])


def variable_name(service: str, environment: str) -> str:
    """`last-automatic-rollback-<service>-<environment>` (Prefect Variable names: a-z, 0-9, dashes, underscores)."""
    return re.sub(r"[^a-z0-9_-]", "-", f"last-automatic-rollback-{service}-{environment}".lower())[:255]


def group_id(group_key: str, fingerprints: Iterable[str]) -> str:
    """A short stable id of an alert group: its `groupKey`, or the fingerprints of its alerts when it has none."""
    source = group_key or ",".join(sorted(fingerprints))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


# --- the decisions (pure) -----------------------------------------------------------------------------------


def rollback_end(last: LastRollback, now: datetime) -> datetime:
    """When that rollback ended: its end, or, with none written yet, now (still running) up to RUN_LIMIT."""
    if last.ended_at is not None:
        return last.ended_at
    return min(now, last.deploy_started_at + RUN_LIMIT)


def hold_reason(
    last: LastRollback | None,
    alert_started_at: datetime,
    now: datetime,
    hold: timedelta,
    *,
    run_id: str | None = None,
) -> str | None:
    """Why an alert that started at `alert_started_at` must not start another rollback, or None when it may.

    `run_id` is the run asking: a Retry of the automatic rollback itself is not held by its own record.
    """
    if last is None or last.flow_run_id == run_id:
        return None
    end = rollback_end(last, now)
    target = f"{last.service}/{last.environment}"
    if alert_started_at <= end:
        return (
            f"the alert started at {_hm(alert_started_at)}, before the automatic rollback of {target} "
            f"to {last.to_sha[:7]} ended ({_hm(end)}): same incident"
        )
    if alert_started_at <= end + hold:
        minutes = int(hold.total_seconds() // 60)
        return (
            f"the alert started at {_hm(alert_started_at)}, within the {minutes}-minute hold after the "
            f"automatic rollback of {target} to {last.to_sha[:7]} ended ({_hm(end)})"
        )
    return None


def is_recent(last: LastRollback | None, now: datetime, hold: timedelta) -> bool:
    """Whether an automatic rollback happened so recently (before its end plus the hold) that a person should know."""
    return last is not None and now <= rollback_end(last, now) + hold


def _hm(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


# --- the record in Prefect (I/O) ----------------------------------------------------------------------------


def read_last(client: SyncPrefectClient, service: str, environment: str) -> LastRollback | None:
    """The last automatic rollback recorded for the service and environment, if any, with its end."""
    variable = client.read_variable_by_name(variable_name(service, environment))
    last = None if variable is None else LastRollback.from_value(variable.value, service, environment)
    if last is None:
        return None
    from prefect.exceptions import ObjectNotFound

    try:
        run = client.read_flow_run(UUID(last.flow_run_id))
    except ObjectNotFound:  # deleted: its end is unknown, RUN_LIMIT bounds it
        return last
    return with_end(last, run)


async def aread_last(client: PrefectClient, service: str, environment: str) -> LastRollback | None:
    """`read_last` for async callers (the alert endpoint)."""
    variable = await client.read_variable_by_name(variable_name(service, environment))
    last = None if variable is None else LastRollback.from_value(variable.value, service, environment)
    if last is None:
        return None
    from prefect.exceptions import ObjectNotFound

    try:
        run = await client.read_flow_run(UUID(last.flow_run_id))
    except ObjectNotFound:
        return last
    return with_end(last, run)


def with_end(last: LastRollback, run: FlowRun) -> LastRollback:
    """The record with its end: when its flow run reached a final state (Prefect's own account, crashes included).

    The end is not written in the Variable: the run's state is the truth, and one write fewer matters on
    SQLite, where an update (read, then write) collides with the server's own writes ("database is locked").
    """
    if run.state is None or not run.state.is_final():
        return replace(last, ended_at=None)  # running again (a Retry) or still running
    return replace(last, ended_at=run.end_time or run.state.timestamp)


def write_last(last: LastRollback) -> None:
    """Write the record (created, or replacing the one there); SQLite busy: tried again soon (prefect_calls).

    Callers hold the service's rollback slot, so two writes never race.
    """
    from runbook.prefect_calls import put_variable

    put_variable(variable_name(last.service, last.environment), last.to_value(), ["runbook"])
