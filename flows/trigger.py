"""Who started a rollback run, as the runbook knows it: never as whoever created the run says.

- `drill`: the rehearsal flow's drill, in its own process, inside `drill()`. A context variable, not a flow
  parameter: nothing a run's creator sends through the API can reach it. Drills post nothing (the rehearsal
  reports) and never mark the version rolled back from as bad (they roll back healthy versions).
- `alert`: the run carries an alert in its context (the alert endpoint sets it: runbook/incident.py). Claiming
  one only brings in the rules of automatic rollbacks (runbook/hold.py): a held run deploys nothing; a run that
  deploys is announced.
- `schedule`: Prefect's scheduler created the run (`auto_scheduled`, which only the server sets).
- `manual`: anything else (the UI, the API, the shell).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

from prefect.context import FlowRunContext

from runbook.incident import AlertContext, from_run_context

Trigger = Literal["drill", "alert", "schedule", "manual"]

_DRILL: ContextVar[bool] = ContextVar("rollback_drill", default=False)


@contextmanager
def drill() -> Iterator[None]:
    """Within it, the rollbacks this process runs are rehearsal drills: silent, marking nothing as bad."""
    token = _DRILL.set(True)
    try:
        yield
    finally:
        _DRILL.reset(token)


def derive_trigger(*, drill: bool, alert: bool, scheduled: bool) -> Trigger:
    """The trigger from what the runbook knows, the strongest first."""
    if drill:
        return "drill"
    if alert:
        return "alert"
    return "schedule" if scheduled else "manual"


def current_alert() -> AlertContext | None:
    """The alert the run in progress carries in its context, if any (ConfigError when malformed).

    A rollback that is one service of an incident: the alert its incident received for that service.
    """
    from flows._member import current_member

    member = current_member()
    if member is not None:
        return member.alert
    return from_run_context(current_run_context())


def current_run_context() -> dict[str, Any]:
    """The context the run in progress was created with (where the alert endpoint puts alerts); {} outside one."""
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return dict(run.context or {}) if run is not None else {}


def current_trigger(alert: AlertContext | None) -> Trigger:
    """The trigger of the rollback run in progress."""
    context = FlowRunContext.get()
    scheduled = bool(context and context.flow_run and context.flow_run.auto_scheduled)
    return derive_trigger(drill=_DRILL.get(), alert=alert is not None, scheduled=scheduled)


def completed_earlier() -> str | None:
    """For a Retry of a run that already Completed: when it did (`2026-11-30 14:03:12 UTC`); None otherwise.

    Such a Retry has nothing left to do: the rollback it made is done, announced and recorded, and doing it again
    would post the end and the GitHub statuses twice (or roll back further). Only the first attempt reads nothing.
    """
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or (ctx.flow_run.run_count or 1) <= 1:
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(ctx.flow_run.id)
    done = [s.timestamp for s in states if s.type == StateType.COMPLETED and s.timestamp is not None]
    return f"{min(done):%Y-%m-%d %H:%M:%S} UTC" if done else None
