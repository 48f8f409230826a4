"""A rollback run that is one service of an incident (flows/incident.py): what it gets from its incident.

The incident runs each service's `rollback` as a subflow in a thread of its own, inside `member()`: a context
variable, not a flow parameter (nothing a run's creator sends through the API can reach it, as for drills in
flows/trigger.py). The rollback reads it for the alert that concerns its service (the incident's run carries
one per service in its context), the incident's Slack thread (`board`), and hands its journal back for the
incident's post-mortem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from flows._slack import Board
from runbook.incident import AlertContext
from runbook.incidents import IncidentService
from runbook.journal import Journal


@dataclass
class Member:
    """One service of an incident, as its rollback run sees it; `journal` is set by the run when it starts."""

    service: IncidentService
    alert: AlertContext | None
    board: Board
    journal: Journal | None = field(default=None)
    #: Called once the service is healthy again (those that go back after it need not wait for the rest).
    on_recovered: Callable[[], None] = field(default=lambda: None)


_MEMBER: ContextVar[Member | None] = ContextVar("incident_member", default=None)


def current_member() -> Member | None:
    """The incident member the rollback in progress is, or None for a rollback of its own."""
    return _MEMBER.get()


@contextmanager
def member(of: Member) -> Iterator[Member]:
    """Within it, the rollback run called in this thread is `of`, one service of an incident."""
    token = _MEMBER.set(of)
    try:
        yield of
    finally:
        _MEMBER.reset(token)


def recovered_now() -> None:
    """The rollback in progress is healthy again: its incident may start the services that wait for it."""
    one = _MEMBER.get()
    if one is not None:
        one.on_recovered()
