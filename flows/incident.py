"""The `incident` flow: one incident, several services, each rolled back by the `rollback` flow as a subflow.

- Every service's rollback runs at once, each in a thread of this run, each with its own one-at-a-time slot,
  its own checks and its own post-mortem (flows/rollback.py, unchanged). A service whose configuration says
  `roll_back_after: [api]` waits for the incident's `api` to be rolled back and healthy; when `api` did not
  recover, it is left as it is (rolling a front end back over a broken API would not help; a person decides).
- One Slack thread (flows/_slack.py `Board`): the root lists the services and each one's status as it changes;
  each service's seed messages are replies in it, naming the service; the incident's end is one broadcast reply.
- One post-mortem (runbook/postmortem.py `render_incident`): a row per service (from, to, digest, time to
  recovery, outcome), the overall time to recovery (the last service healthy), the timelines merged.
- A service that cannot be rolled back does not stop the others: the incident ends Failed naming it.
- A Retry rolls back again only the services that did not recover: one recovered by an earlier attempt is left
  as it is (read from this run's subflow runs in Prefect), never rolled back one version further.

Started from the UI or the API (a list of services and environments), or by the alert endpoint when one alert
group names several configured services (each service's alert travels in the run's context, like a rollback's).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any, cast

from prefect import Flow, flow, get_run_logger
from prefect.client.schemas.objects import FlowRun, State
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows._member import Member, member
from flows._slack import Board
from flows.rollback import RollbackSummary, nothing_left_to_do, rollback, run_page_url
from flows.trigger import completed_earlier, current_alert, current_run_context, current_trigger
from runbook import background, messages
from runbook.clients import Scope
from runbook.config import load_config
from runbook.errors import RunbookError
from runbook.incident import member_alerts_from_run_context
from runbook.incidents import IncidentService, Plan, parse_services, plan
from runbook.journal import Journal, describe_error, utcnow
from runbook.postmortem import ServiceRow, incident_time_to_recovery
from runbook.prefect_calls import hear_busy_soon
from runbook.slack import SlackPoster
from tasks.postmortem import write_incident_postmortem


class IncidentFailed(RunbookError):
    """Some services of the incident did not recover (the others did)."""


@dataclass(frozen=True)
class IncidentSummary:
    """What the run returns: the outcome, each service's row, the overall time to recovery."""

    outcome: str
    services: dict[str, str]  # service/environment -> outcome
    time_to_recovery: float | None
    postmortem: str


def _run_name() -> str:
    services = parse_services(flow_run.parameters.get("services") or [])
    return "incident-" + "-".join(s.service for s in services[:4]) + ("-etc" if len(services) > 4 else "")


@flow(name="incident", flow_run_name=_run_name, timeout_seconds=4 * 3600)
def incident(
    services: list[IncidentService],
    reason: str = "",
    incident: str | None = None,
) -> IncidentSummary | State:
    """Roll several services of one incident back together: one Slack thread, one post-mortem.

    Args:
        services: The services to roll back, each with its environment.
        reason: Why, in a few words (shown in Slack and in the post-mortem).
        incident: Incident id or link, if any.

    Each service goes back to its last known good version (its own `rollback` run, shown as a subflow); the
    configuration's `roll_back_after` orders them; the others run at once.
    """
    hear_busy_soon()  # on SQLite, the services' rollbacks starting together meet "database is locked": 0.1 s, not 2 s
    config = load_config()
    members = plan(config, parse_services(services))  # unknown or repeated services: fail before anything
    if done := completed_earlier():  # a Retry of an incident that already Completed: nothing to do again
        return nothing_left_to_do(done, "incident")
    alert = current_alert()
    alerts = member_alerts_from_run_context(current_run_context())
    now = utcnow()
    keys = [m.key for m in members.members]
    record = Journal(
        service=", ".join(sorted({m.service for m in members.members})),
        environment=", ".join(sorted({m.environment for m in members.members})),
        trigger=current_trigger(alert),
        reason=reason,
        incident=incident,
        detected_at=min([a.starts_at for a in alerts.values()] + ([alert.starts_at] if alert else []), default=now),
        started_at=now,
        run_url=run_page_url(),
        alert=alert,
        attempt=flow_run.run_count or 1,
    )
    if record.run_url:
        record.links["incident run"] = record.run_url
    first = Scope.of(config, members.members[0].service, members.members[0].environment)
    mentions = tuple(dict.fromkeys(m for s in members.members for m in config.service(s.service).slack.mentions))
    ctx = messages.IncidentContext(
        service=record.service,
        environment=record.environment,
        reason=reason,
        incident=incident,
        mentions=mentions,
        run_url=record.run_url,
        language=first.slack.language,
        alert=record.alert_line(),
    )
    board = Board(SlackPoster(first.slack, first.channel), record, ctx, keys, enabled=True)
    earlier = _earlier_runs() if record.attempt > 1 else {}
    roster = _Roster(members, board, alerts, reason, incident, earlier)
    rows = roster.run()
    return _end(record, board, rows, first.slack.language, mentions)


def _end(
    record: Journal, board: Board, rows: list[ServiceRow], language: messages.Language, mentions: tuple[str, ...]
) -> IncidentSummary | State:
    """Tell the thread how the incident ended, write its post-mortem, and end the run accordingly."""
    failed = {row.key: row.why for row in rows if not row.recovered}
    ttr = incident_time_to_recovery(record, rows)
    if not failed:
        record.outcome = "recovered"
        status, text = messages.incident_recovered(language, len(rows), ttr or 0.0)
    else:
        record.fail("incident", "; ".join(f"{key}: {why}" for key, why in failed.items()))
        status, text = messages.incident_failed(language, len(rows), failed, mentions)
    board.end(text, status)
    board.close()
    record.ended_at = utcnow()
    markdown = write_incident_postmortem(record, rows)
    summary = IncidentSummary(record.outcome, {row.key: row.outcome for row in rows}, ttr, markdown)
    if not failed:
        get_run_logger().info("incident recovered: %d services, time to recovery %.1f s", len(rows), ttr or 0.0)
        return summary
    if all(row.outcome == "not-run" for row in rows):  # held, or being rolled back elsewhere: nothing done here
        return Cancelled(
            message="no service rolled back by this incident: " + "; ".join(f"{k}: {w}" for k, w in failed.items())
        )
    raise IncidentFailed(
        f"{len(failed)} of {len(rows)} services not recovered: "
        + "; ".join(f"{key} ({why})" for key, why in failed.items()),
        hint="follow each one in its rollback run; the others recovered",
    )


class _Roster:
    """The incident's services, each rolled back in its own thread, in the order the configuration asks for."""

    def __init__(
        self,
        members: Plan,
        board: Board,
        alerts: dict[str, Any],
        reason: str,
        incident: str | None,
        earlier: dict[str, FlowRun],
    ) -> None:
        self._plan = members
        self._board = board
        self._alerts = alerts
        self._reason = reason
        self._incident = incident
        self._earlier = earlier
        # Set once a service is healthy again, or its rollback ended otherwise: those after it may go on.
        self._settled = {m.key: threading.Event() for m in members.members}
        self._recovered: set[str] = set()
        self._rows: dict[str, ServiceRow] = {}

    def run(self) -> list[ServiceRow]:
        threads = [background.start(f"incident-{m.key}", self._one, m) for m in self._plan.members]
        for thread in threads:
            thread.join()
        return [self._rows[m.key] for m in self._plan.members]

    def _one(self, service: IncidentService) -> None:
        try:
            row = self._roll_back(service)
        except Exception as exc:  # a bug or the API: this service failed, the others go on
            get_run_logger().exception("the rollback of %s ended with an error", service.key)
            row = ServiceRow(service.key, "failed", describe_error(exc))
        self._rows[service.key] = row
        if row.recovered:
            self._recovered.add(service.key)
        self._settled[service.key].set()

    def _roll_back(self, service: IncidentService) -> ServiceRow:
        key, language = service.key, self._board.language
        earlier = self._earlier.get(key)
        if earlier is not None and earlier.state is not None and earlier.state.is_completed():
            status = messages.status_recovered_earlier(language, earlier.name)
            self._board.member_status(key, status, "recovered earlier")
            return ServiceRow(key, "recovered-earlier", f"recovered by run {earlier.name}", run=str(earlier.id))
        first = self._plan.first[key]
        if first:
            self._board.member_status(key, messages.status_waiting(language, ", ".join(first)), "waiting")
            for before in first:
                self._settled[before].wait()
            blocked = [before for before in first if before not in self._recovered]
            if blocked:
                names = ", ".join(blocked)
                self._board.member_status(key, messages.status_skipped(language, names), "skipped")
                return ServiceRow(key, "skipped", f"not rolled back: {names} had to go back first and did not recover")
        one = Member(service, self._alerts.get(key), self._board, on_recovered=lambda: self._healthy(key))
        with member(one):
            if earlier is not None:  # an earlier attempt's run that did not recover: that run again
                state = _retry_in_place(service, earlier)
            else:
                state = cast(
                    State,
                    _member_flow(service)(
                        service=service.service,
                        environment=service.environment,
                        reason=self._reason,
                        incident=self._incident,
                        return_state=True,
                    ),
                )
        return self._row(key, state, one.journal)

    def _healthy(self, key: str) -> None:
        """`key`'s rollback says it is healthy again (its run still finishing its records)."""
        self._recovered.add(key)
        self._settled[key].set()

    def _row(self, key: str, state: State, journal: Journal | None) -> ServiceRow:
        if state.is_completed():
            summary = state.result(raise_on_failure=False)
            if isinstance(summary, RollbackSummary) and summary.outcome == "recovered":
                return ServiceRow(key, "recovered", "", journal)
        if state.is_cancelled():  # held by an earlier automatic rollback, or one already in progress
            why = state.message or "cancelled"
            self._board.member_status(key, messages.status_not_run(self._board.language, why), "not run")
            return ServiceRow(key, "not-run", why, journal)
        why = state.message or "failed"
        if journal is not None and journal.failure_reason:
            why = f"failed at {journal.failure_step}: {journal.failure_reason}"
        return ServiceRow(key, "failed", why, journal)


@functools.cache
def _member_flow(service: IncidentService) -> Flow[..., Any]:
    """The `rollback` flow, as this service's subflow of an incident.

    The same flow (name, parameters, code); only the function's name differs per service, so that Prefect's
    record of the subflow call (its parent task run, keyed by that name) is this service's in every attempt,
    whatever order the threads call in: a Retry of the incident finds each service's own earlier run.
    """

    @functools.wraps(rollback.fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return rollback.fn(*args, **kwargs)

    name = f"rollback_{service.service}_{service.environment}".replace("-", "_")
    run.__name__ = run.__qualname__ = name
    return Flow(
        fn=run,
        name=rollback.name,
        flow_run_name=rollback.flow_run_name,
        description=rollback.description,
        timeout_seconds=rollback.timeout_seconds,
    )


def _earlier_runs() -> dict[str, FlowRun]:
    """Each service's rollback run of an earlier attempt of this incident (the latest), by `service/environment`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )
    found: dict[str, FlowRun] = {}
    for run in runs:  # the latest last
        given = run.parameters or {}
        found[f"{given.get('service')}/{given.get('environment')}"] = run
    return found


def _retry_in_place(service: IncidentService, earlier: FlowRun) -> State:
    """The service's rollback run of the earlier attempt, run again (the UI's Retry, for that run).

    Its choices stay (the SHA resolved, the thread, the deploy it may have made: cached for the flow run, as
    for any Retry): a new run would resolve again and could go one version further back.
    """
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import AwaitingRetry

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(earlier.id, AwaitingRetry(message="retried by its incident"), force=True)
        again = client.read_flow_run(earlier.id)
    return cast(
        State, run_flow(_member_flow(service), flow_run=again, parameters=again.parameters, return_type="state")
    )
