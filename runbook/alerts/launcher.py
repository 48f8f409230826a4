"""Starting the rollback of an alert: a run of the `rollback` deployment, at most one active per service and
environment.

`PrefectLauncher` keeps one rollback per (service, environment): an active run of the deployment with the same
`service` and `environment` parameters is returned instead of a new one. Its idempotency key (the alert group's
`groupKey` and each firing alert's fingerprint and start, hashed) makes a repeat notification of the same
alerts return the run they started rather than start another; two incidents in the same minute differ.

The run's parameters are a person's (`service`, `environment`, `reason`, `incident`: what the Prefect UI's form
shows); the alert that started it travels as typed data in the run's *context* (`runbook.incident.AlertContext`:
its name, labels, link, start, source, group and fingerprints).

One incident, at most one automatic rollback (runbook/hold.py): after an automatic rollback, alerts that
started before it ended or within `alerts.hold_minutes` after are held. The flow decides (and tells the
rollback's Slack thread, once per alert group); the launcher answers `held` without creating a run for a group
that was already told.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from uuid import uuid4

import httpx

from runbook import hold
from runbook.errors import LaunchError
from runbook.incident import AlertContext, member_alerts_to_run_context

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun, State

logger = logging.getLogger("runbook.alerts")

#: Prefect state types of a run that is still going (AwaitingRetry/Late are SCHEDULED, Retrying is RUNNING).
ACTIVE_STATE_TYPES: tuple[str, ...] = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
#: The message of the PENDING state a run handed to `runbook serve`'s warm process is created in.
HANDED_OVER = "handed to runbook serve's warm process"
#: A run PENDING with this launcher's mark is handed over (again) only this young (the watcher takes older ones).
HAND_OVER_SECONDS = 15.0
#: How long a launch may take (the Prefect API busy included) before the answer is a 503 the sender retries.
LAUNCH_SECONDS = 8.0
#: Launches talking to the Prefect API at once (more only queue up for SQLite's writer lock).
LAUNCH_CONCURRENCY = 4
#: The limits of `AlertContext`'s name, link and group key.
_NAME_MAX, _LINK_MAX, _GROUP_KEY_MAX = 500, 2000, 2000


@dataclass(frozen=True)
class RollbackRequest:
    """What an alert asks for: a rollback of one service in one environment."""

    service: str
    environment: str
    reason: str
    detected_at: datetime
    link: str | None
    alert_fingerprint: str
    alert_name: str = ""
    alert_labels: tuple[tuple[str, str], ...] = ()
    group_key: str = ""
    #: (fingerprint, start) of each firing alert of the group for this service and environment.
    alerts: tuple[tuple[str, datetime], ...] = ()
    hold_minutes: int = 30
    #: The alert source (`runbook.alerts.source.SOURCES`) the alert came from.
    source: str = "alertmanager"

    @property
    def fingerprints(self) -> list[str]:
        return sorted({f for f, _ in self.alerts} or {self.alert_fingerprint})

    def alert_context(self) -> AlertContext:
        """The alert as the run carries it in its context (for the post-mortem, the Slack thread and the hold).

        Within the context's limits, so that no alert is refused for its size (a 503 Alertmanager would retry
        forever): a name over 500 characters is cut, a link over 2,000 is left out (a cut link leads nowhere;
        the run's `incident` parameter has it whole), a longer group key is replaced by its digest.
        """
        name = self.alert_name if len(self.alert_name) <= _NAME_MAX else self.alert_name[: _NAME_MAX - 1] + "…"
        group_key = self.group_key
        if len(group_key) > _GROUP_KEY_MAX:
            group_key = "sha256:" + hashlib.sha256(group_key.encode()).hexdigest()
        return AlertContext(
            name=name,
            labels=dict(self.alert_labels),
            link=self.link if self.link is None or len(self.link) <= _LINK_MAX else None,
            starts_at=self.detected_at,
            source=self.source,
            group_key=group_key,
            fingerprints=tuple(self.fingerprints),
        )


@dataclass(frozen=True)
class Launch:
    """The run answering a request: new (`created`) or the one already there; `state` is its state type.

    `held` (with the automatic rollback's run as `run_id`, state HELD): no run, and why.
    """

    run_id: str
    created: bool
    state: str
    held: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATE_TYPES


class RunLauncher(Protocol):
    """Starts a rollback run unless one is already active for the service and environment."""

    async def launch(self, request: RollbackRequest) -> Launch: ...


class IncidentStarter(Protocol):
    """Starts one incident run for an alert group that names several services."""

    async def launch_incident(self, request: IncidentRequest) -> Launch: ...


def idempotency_key(request: RollbackRequest) -> str:
    """`alert:<service>:<environment>:<digest>` of the group key and each firing alert's fingerprint and start.

    Stable across repeat notifications of the same alerts; new for another group, another set of alerts, or
    the same alert firing again later (a fingerprint is only its label set; Prefect keeps keys forever).
    """
    alerts = request.alerts or ((request.alert_fingerprint, request.detected_at),)
    parts = sorted(f"{fingerprint}@{start.astimezone(UTC).isoformat()}" for fingerprint, start in alerts)
    digest = hashlib.sha256("\n".join([request.group_key, *parts]).encode()).hexdigest()[:24]
    return f"alert:{request.service}:{request.environment}:{digest}"


class PrefectLauncher:
    """Creates runs of the `rollback` deployment through the Prefect API, one active per service and environment.

    Within this process an `asyncio.Lock` per (service, environment) serialises check-then-create; across
    processes (two endpoint replicas) the idempotency key makes the same alert group land on the same run.

    Under a storm (20 services alerting at once, Prefect on SQLite busy with the runs already started) the
    launches under way share one API client, read the deployment once, make their reads concurrently (active
    runs, the idempotency key's run, the hold record) and then their one write; at most `concurrency` of them
    talk to the API at a time (more only collide on SQLite's writer lock: a 503 each, after about 2 s). A 503
    is retried after 0.1 s, doubling up to 1 s, instead of Prefect's 2 s, 4 s... The whole launch is bounded by
    `timeout_seconds`: past it, the answer is a 503 saying the API is busy, which Alertmanager retries (and
    the idempotency key makes the retry find a run the late attempt may have created).

    `hand_to`: in `runbook serve`, `commands.warm.WarmRuns.run_owned`: each run is created PENDING, marked as
    this launcher's, and handed to it, which runs it at once in that process, instead of waiting for a runner's
    poll and a new process. A create whose answer was lost is found again by the next attempt (the idempotency
    key, then the active run): still PENDING with this launcher's mark, it is handed over then, never left
    waiting. A run another replica created carries its mark, not this one's. `transport`: how the API is
    reached (tests give one that loses an answer).
    """

    def __init__(
        self,
        deployment_name: str = "rollback/rollback",
        *,
        timeout_seconds: float = LAUNCH_SECONDS,
        concurrency: int = LAUNCH_CONCURRENCY,
        hand_to: Callable[[FlowRun], object] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        mark: str | None = None,
    ) -> None:
        self.deployment_name = deployment_name
        self.hand_to = hand_to
        self.transport = transport
        #: The PENDING message of the runs created to be handed over (`runbook serve`: its warm runs' own).
        self.mark = mark or f"{HANDED_OVER} ({uuid4().hex[:12]})"
        self.timeout_seconds = timeout_seconds
        self.concurrency = concurrency
        self._deployment_id: UUID | None = None
        self._on: _LoopState | None = None

    def __repr__(self) -> str:
        return f"PrefectLauncher(deployment_name={self.deployment_name!r})"

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._on is None or self._on.loop is not loop:  # locks and clients belong to one event loop
            self._on = _LoopState(loop, asyncio.Semaphore(self.concurrency), asyncio.Lock())
        return self._on

    @asynccontextmanager
    async def _client(self, state: _LoopState) -> AsyncIterator[PrefectClient]:
        """One API client shared by the launches under way (one connection pool), closed after the last."""
        async with state.opening:
            if state.no_retries is None:
                import prefect.context
                from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

                # Prefect's client waits 2 s, then 4 s... after each 503: `_until_answered` retries sooner.
                settings = prefect.context.get_settings_context()
                quick = settings.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
                state.no_retries = (settings.profile, quick)
            if state.client is None:
                from prefect.client.orchestration import get_client

                from runbook.prefect_calls import hear_busy_soon

                hear_busy_soon()  # a busy answer comes back after 0.1 s, not Prefect's 2 s sleep
                client = get_client(httpx_settings={"transport": self.transport} if self.transport else None)
                await client.__aenter__()
                state.client = client
            state.users += 1
            shared = state.client
        try:
            yield shared
        finally:
            state.users -= 1
            if state.users == 0 and state.client is shared:
                state.client = None
                await shared.__aexit__(None, None, None)

    async def launch(self, request: RollbackRequest) -> Launch:
        return await self._guarded((request.service, request.environment), lambda client: self._launch(client, request))

    async def _guarded(self, key: tuple[str, str], call: Callable[[PrefectClient], Awaitable[Launch]]) -> Launch:
        """`call` with the API's client, one at a time per `key`, within the launch's time; LaunchError otherwise."""
        import httpx
        from prefect.exceptions import ObjectNotFound, PrefectException

        state = self._state()
        try:
            async with asyncio.timeout(self.timeout_seconds), state.lock(*key):
                return await self._until_answered(state, call)
        except ObjectNotFound:
            self._deployment_id = None
            raise LaunchError(
                f"the Prefect deployment {self.deployment_name!r} does not exist",
                hint="start `runbook serve` (it deploys the rollback flow) or check the Prefect API URL",
            ) from None
        except TimeoutError:
            raise LaunchError(
                f"the Prefect API is busy: no answer within {self.timeout_seconds:g} s",
                hint="the sender retries this 503; if it lasts, check the Prefect server (on SQLite, a storm of "
                "runs keeps it busy: PostgreSQL for a shared server) and PREFECT_API_URL",
            ) from None
        except (httpx.HTTPError, PrefectException, OSError) as exc:
            raise LaunchError(
                f"the Prefect API failed: {type(exc).__name__}: {exc}",
                hint="check the Prefect server (prefect server start) and PREFECT_API_URL",
            ) from None

    async def _until_answered(self, state: _LoopState, call: Callable[[PrefectClient], Awaitable[Launch]]) -> Launch:
        """`_launch`, again after a short pause (0.1 s, doubling up to 1 s) while the API answers it is busy.

        SQLite's writer lock ("database is locked") comes back as a 503, an overloaded server may drop a kept-alive
        connection; every call of a launch is safe to repeat (reads, and a create carrying the idempotency key).
        The launch's timeout bounds the whole.
        """
        import prefect.context
        from prefect.exceptions import PrefectHTTPStatusError

        pause = 0.1
        async with self._client(state) as client:
            while True:
                async with state.gate:
                    profile, settings = state.no_retries
                    try:
                        with prefect.context.SettingsContext(profile=profile, settings=settings):
                            return await call(client)
                    except PrefectHTTPStatusError as exc:
                        if exc.response.status_code not in (429, 502, 503):
                            raise
                        logger.debug("Prefect API busy (%s): retrying in %.1f s", exc.response.status_code, pause)
                    except (httpx.ReadError, httpx.RemoteProtocolError) as exc:  # a kept-alive connection dropped
                        logger.debug("Prefect API connection dropped (%s): retrying in %.1f s", exc, pause)
                await asyncio.sleep(pause)  # not holding a place at the gate
                pause = min(pause * 2, 1.0)

    async def _launch(self, client: PrefectClient, request: RollbackRequest) -> Launch:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterDeploymentId,
            FlowRunFilterIdempotencyKey,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        deployment_id = await self._resolve_deployment(client)
        key = idempotency_key(request)
        # Three reads at once (one round trip's wait; reads do not take SQLite's writer lock), then one write.
        active, earlier, held = await asyncio.gather(
            client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType(t) for t in ACTIVE_STATE_TYPES])
                    ),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            ),
            client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                    idempotency_key=FlowRunFilterIdempotencyKey(any_=[key]),
                ),
                limit=1,
            ),
            _held_and_told(client, request),
        )
        for run in active:
            given = run.parameters or {}
            if (given.get("service"), given.get("environment")) == (request.service, request.environment):
                self._hand_over_if_ours(run)  # created by an attempt whose answer was lost
                return _launch_of(run, created=False)
        if earlier:  # these alerts' rollback already ran and ended: Prefect would hand it back anyway
            return _launch_of(earlier[0], created=False)
        if held is not None:
            return held

        # A person's fields only (the Prefect UI's form); the alert goes into the run's context, typed.
        parameters: dict[str, Any] = {
            "service": request.service,
            "environment": request.environment,
            "reason": request.reason,
            "incident": request.link,
        }
        run = await self._create(
            client,
            deployment_id,
            request,
            parameters=parameters,
            context=request.alert_context().to_run_context(),
            tags=["alert", request.service, request.environment],
            idempotency_key=key,
        )
        logger.info(
            "created rollback run %s for %s/%s (alert %s)",
            run.id,
            request.service,
            request.environment,
            request.alert_fingerprint,
        )
        return _launch_of(run, created=True)

    async def _create(
        self, client: PrefectClient, deployment_id: UUID, request: RollbackRequest, **fields: Any
    ) -> FlowRun:
        """Create the run (`fields`: parameters, context, tags, idempotency key) and hand it over when ours.

        Handed over: created PENDING (no runner or worker picks that up), with this launcher's mark, and run at
        once in `runbook serve`'s warm process. Prefect's 409 (the deployment's schema refuses `request`'s
        service or environment) is a LaunchError saying to reload.
        """
        from prefect.exceptions import PrefectHTTPStatusError
        from prefect.states import Pending

        own: State[Any] | None = Pending(message=self.mark) if self.hand_to else None
        try:
            run = await client.create_flow_run_from_deployment(deployment_id, state=own, **fields)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 409:
                raise
            raise _refused_by_deployment(self.deployment_name, request, exc.response) from None
        self._hand_over_if_ours(run)
        return run

    def _hand_over_if_ours(self, run: FlowRun) -> None:
        """Hand `run` over when it waits PENDING with this launcher's mark (the warm runs ignore one they run).

        Only while it is recent: one left longer is scheduled again by the warm runs' watcher (commands/warm.py,
        after 30 s), and must not be started by both.
        """
        state = run.state
        if self.hand_to is None or state is None or not state.is_pending() or state.message != self.mark:
            return
        if (datetime.now(UTC) - state.timestamp).total_seconds() < HAND_OVER_SECONDS:
            self.hand_to(run)

    async def _resolve_deployment(self, client: PrefectClient) -> UUID:
        if self._deployment_id is None:
            async with self._state().opening:  # read once, not once per launch waiting for it
                if self._deployment_id is None:
                    self._deployment_id = (await client.read_deployment_by_name(self.deployment_name)).id
        return self._deployment_id


@dataclass(frozen=True)
class IncidentRequest:
    """One alert group naming several services: one incident, a rollback of each (flows/incident.py)."""

    requests: tuple[RollbackRequest, ...]

    @property
    def first(self) -> RollbackRequest:
        """The group's earliest alert's request: its reason and link are the incident's."""
        return min(self.requests, key=lambda r: r.detected_at)

    @property
    def key(self) -> str:
        return ",".join(f"{r.service}/{r.environment}" for r in self.requests)


def incident_idempotency_key(request: IncidentRequest) -> str:
    """`incident:<digest>` of each service's own key (runbook/alerts/launcher.py `idempotency_key`)."""
    keys = sorted(idempotency_key(r) for r in request.requests)
    return "incident:" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]


class IncidentLauncher(PrefectLauncher):
    """Creates a run of the `incident` deployment for an alert group that names several services.

    The same guarantees as a rollback's launch: one run per group and set of alerts (the idempotency key; a
    create whose answer was lost is found again, and handed over if it is this launcher's), busy answers
    retried within the launch's time. A service already being rolled back, or held by an earlier automatic
    rollback, is the incident's rollback subflow's to find (its one-at-a-time slot, its hold): said in the
    incident's thread and post-mortem.
    """

    def __init__(self, deployment_name: str = "incident/incident", **options: Any) -> None:
        super().__init__(deployment_name, **options)

    def __repr__(self) -> str:
        return f"IncidentLauncher(deployment_name={self.deployment_name!r})"

    async def launch_incident(self, request: IncidentRequest) -> Launch:
        return await self._guarded(("incident", request.key), lambda client: self._launch_incident(client, request))

    async def _launch_incident(self, client: PrefectClient, request: IncidentRequest) -> Launch:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterIdempotencyKey

        deployment_id = await self._resolve_deployment(client)
        key = incident_idempotency_key(request)
        earlier = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                idempotency_key=FlowRunFilterIdempotencyKey(any_=[key]),
            ),
            limit=1,
        )
        if earlier:  # a repeat of the same alerts, or a create whose answer was lost
            self._hand_over_if_ours(earlier[0])
            return _launch_of(earlier[0], created=False)
        first = request.first
        services = [{"service": r.service, "environment": r.environment} for r in request.requests]
        alerts = {f"{r.service}/{r.environment}": r.alert_context() for r in request.requests}
        run = await self._create(
            client,
            deployment_id,
            first,
            parameters={"services": services, "reason": first.reason, "incident": first.link},
            context={**first.alert_context().to_run_context(), **member_alerts_to_run_context(alerts)},
            tags=["alert", "incident", *sorted({r.service for r in request.requests})],
            idempotency_key=key,
        )
        logger.info("created incident run %s for %s (alert group %s)", run.id, request.key, first.group_key or "-")
        return _launch_of(run, created=True)


@dataclass
class _LoopState:
    """What a launcher keeps per event loop: the gate, the per-target locks, the shared API client."""

    loop: asyncio.AbstractEventLoop
    gate: asyncio.Semaphore
    opening: asyncio.Lock
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    client: PrefectClient | None = None
    users: int = 0
    no_retries: Any = None  # (profile, settings) of Prefect's settings context, with its client's retries off

    def lock(self, service: str, environment: str) -> asyncio.Lock:
        return self.locks.setdefault((service, environment), asyncio.Lock())


def _refused_by_deployment(deployment: str, request: RollbackRequest, response: Any) -> LaunchError:
    """Prefect's 409: the deployment's parameter schema (its service and environment choices) refuses these."""
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:
        detail = response.text
    return LaunchError(
        f"the Prefect deployment {deployment!r} does not accept service={request.service!r} "
        f"environment={request.environment!r} ({detail[:300] or 'HTTP 409'}): it was registered from an older "
        "configuration",
        hint="reload `runbook serve` (kill -HUP its process: it re-reads the configuration and registers the "
        "deployments again) or restart it; the sender retries this 503 meanwhile",
    )


async def _held_and_told(client: PrefectClient, request: RollbackRequest) -> Launch | None:
    """A held alert whose group was already told in the rollback's thread: nothing to start, nothing to post.

    A held group not told yet gets a run all the same: the flow holds it and posts the reply (it is the safety
    net: a second endpoint or an older one without this check changes nothing).
    """
    last = await hold.aread_last(client, request.service, request.environment)
    reason = hold.hold_reason(last, request.detected_at, datetime.now(UTC), timedelta(minutes=request.hold_minutes))
    if last is None or reason is None:
        return None
    alert = request.alert_context()  # the group as the flow reads it from the run's context
    if hold.group_id(alert.group_key, alert.fingerprints) not in last.held_groups:
        return None
    why = f"held: {reason}. No further automatic rollback: a person decides (already said in its Slack thread)"
    return Launch(last.flow_run_id, False, "HELD", held=why)


def _launch_of(run: FlowRun, *, created: bool) -> Launch:
    state = run.state_type.value if run.state_type is not None else "UNKNOWN"
    # A repeat of alerts whose run the flow held: say so, not "already ran".
    held = (run.state.message or "held") if run.state is not None and run.state.name == "Held" else None
    return Launch(str(run.id), created, state, held=held)
