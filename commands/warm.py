"""Rollback runs executed at once by the serving process itself: no runner poll, no new interpreter per run.

A served runner polls for scheduled runs (every second at best) and starts a new Python process per run
(importing Prefect alone takes about a second): 2.5 to 4.5 s between an alert and the first deploy request.
`WarmRuns` keeps the `rollback` flow (and `incident`, read by the same poll) imported in `runbook serve` and runs
each rollback in a thread of it, with
Prefect's own engine (`prefect.flow_engine.run_flow`: the same states, logs, task runs and artifacts as a run in
its own process).

How a run becomes this process's, and no one else's:
- the alert endpoint creates its runs PENDING with this process's mark (`handed_mark`: no runner or worker picks
  up a PENDING run) and hands them to `run_owned()` at once;
- the runs a person creates (the UI, the API, `runbook rollback` against this server) are SCHEDULED: a watcher
  reads the rollback deployment's due runs every `poll_seconds` (0.25 s: a read, cheap even on SQLite) and
  claims each by proposing PENDING (`claimed_mark`). Prefect accepts that from one claimant only (PENDING after
  PENDING or RUNNING is refused), so a worker polling the same deployment, or another `serve`, never runs it
  too. A Retry from the UI makes the run SCHEDULED again (AwaitingRetry): it is claimed the same way;
- a run left PENDING and never started (its process stopped, or the answer to its claim or creation was lost)
  is scheduled again after 30 s: at start, any serve's; while serving, this process's own (every 5 s).

What a thread cannot give that a process did: a run cancelled from the UI is not killed mid-step (it ends at
its next state change); a run in progress ends with the process (`serve` waits for the runs in progress on a
normal stop: `drain()`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any
from uuid import UUID, uuid4

from runbook.alerts.launcher import HANDED_OVER

log = logging.getLogger("runbook.serve")

#: Seconds between two reads of the rollback deployment's due runs (the UI and API path).
POLL_SECONDS = 0.25
#: The message of the PENDING state a run claimed by `WarmRuns` is in until it starts.
CLAIMED = "claimed by runbook serve (warm process)"
#: A run left PENDING by this tool for longer than this was taken by a process that never started it.
ORPHAN_SECONDS = 30
#: How often (in watcher ticks: 5 s) this process looks for its own runs left PENDING by a lost answer.
ORPHAN_TICKS = 20
#: Rollbacks run at once by one `serve` (one thread each; they mostly wait on the network).
MAX_RUNS = 64


class WarmRuns:
    """Runs the flow runs of one deployment in this process's threads, each claimed first (see the module)."""

    def __init__(
        self,
        flow: Any,
        deployment_id: UUID,
        *,
        poll_seconds: float = POLL_SECONDS,
        max_runs: int = MAX_RUNS,
        orphan_seconds: float = ORPHAN_SECONDS,
        more: dict[UUID, Any] | None = None,
    ) -> None:
        """`flow`'s runs of `deployment_id`; `more`: other deployments' ids and their flows, read by the same poll."""
        nonce = uuid4().hex[:12]
        #: The PENDING messages of this process's runs: handed over by its alert endpoint, or claimed by it.
        self.handed_mark, self.claimed_mark = f"{HANDED_OVER} ({nonce})", f"{CLAIMED} ({nonce})"
        self._orphan_seconds = orphan_seconds
        self._flows: dict[UUID, Any] = {deployment_id: flow, **(more or {})}
        self._deployment_ids = list(self._flows)
        self._poll_seconds = poll_seconds
        self._pool = ThreadPoolExecutor(max_workers=max_runs, thread_name_prefix="rollback-run")
        self._running: dict[UUID, Future[Any]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="rollback-run-watcher", daemon=True)

    def start(self) -> None:
        self._watcher.start()

    @property
    def running(self) -> list[UUID]:
        """The runs this process is executing now."""
        with self._lock:
            return [run_id for run_id, future in self._running.items() if not future.done()]

    def take(self, flow_run_id: UUID) -> bool:
        """Claim the run and execute it here, in the background; False when it is already being handled here.

        A run someone else claimed first (or that is no longer SCHEDULED) is left alone.
        """
        return self._submit(flow_run_id, self._claim_and_execute, flow_run_id)

    def _submit(self, flow_run_id: UUID, call: Callable[[Any], None], arg: Any) -> bool:
        with self._lock:
            if self._stopping.is_set() or flow_run_id in self._running:
                return False
            future = self._pool.submit(call, arg)
            self._running[flow_run_id] = future
        future.add_done_callback(lambda _: self._forget(flow_run_id))
        return True

    def run_owned(self, flow_run: Any) -> bool:
        """Execute a run created PENDING for this process (the alert endpoint's): no claim to make."""
        return self._submit(flow_run.id, self._execute, flow_run)

    def drain(self, timeout: float | None = None) -> list[UUID]:
        """Take no new run and wait (at most `timeout` s) for the ones in progress; those still running."""
        self._stopping.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for run_id in self.running:
            with self._lock:
                future = self._running.get(run_id)
            if future is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                with suppress(Exception):  # its state says how it ended; only the wait matters here
                    future.result(timeout=left)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self.running

    def _forget(self, run_id: UUID) -> None:
        with self._lock:
            self._running.pop(run_id, None)

    def _claim_and_execute(self, flow_run_id: UUID) -> None:
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                if not _claim(client, flow_run_id, self.claimed_mark):
                    return
                flow_run = client.read_flow_run(flow_run_id)
        except Exception as exc:  # the API may be down a moment: the watcher finds it again if still SCHEDULED
            log.warning("claiming rollback run %s failed: %s: %s", flow_run_id, type(exc).__name__, exc)
            return
        self._execute(flow_run)

    def _execute(self, flow_run: Any) -> None:
        from prefect.exceptions import Abort
        from prefect.flow_engine import run_flow

        try:
            run_flow(self._flows[flow_run.deployment_id], flow_run=flow_run, return_type="state")
        except Abort as exc:  # the server refused to let it run (another claimant, or it was cancelled)
            log.warning("rollback run %s not run here: %s", flow_run.id, exc)
        except Exception as exc:  # this process goes on serving; the run ends Failed, whatever stage it reached
            log.exception("rollback run %s ended with an error", flow_run.id)
            _fail_unless_final(flow_run.id, exc)

    def _watch(self) -> None:
        """Claim and run the deployment's due SCHEDULED runs (created by a person, or retried) as they appear."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            try:
                _requeue_orphans(client, self._deployment_ids, self._orphan_seconds)
            except Exception as exc:  # never stops serving: those runs stay PENDING, as they were
                log.warning("looking for rollback runs a stopped serve left PENDING failed: %s", exc)
            ticks = 0
            while not self._stopping.wait(self._poll_seconds):
                ticks += 1
                try:
                    for flow_run in _due_runs(client, self._deployment_ids):
                        self.take(flow_run.id)
                    if ticks % ORPHAN_TICKS == 0:  # this process's own, left PENDING by a lost answer
                        own = (self.handed_mark, self.claimed_mark)
                        _requeue_orphans(client, self._deployment_ids, self._orphan_seconds, own, set(self.running))
                except Exception as exc:  # the API may be down a moment: again at the next tick
                    log.warning("reading the rollback runs to start failed: %s: %s", type(exc).__name__, exc)


def _due_runs(client: Any, deployment_ids: list[UUID]) -> list[Any]:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterNextScheduledStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.types._datetime import now

    runs: list[Any] = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=deployment_ids),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=now("UTC")),  # type: ignore[arg-type]
        ),
        sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
        limit=50,
    )
    return runs


def _fail_unless_final(flow_run_id: UUID, exc: Exception) -> None:
    """A run the engine could not start (its parameters refused...) ends Failed, saying why, not left RUNNING."""
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
            if state is None or not state.is_final():
                message = f"not run: {type(exc).__name__}: {exc}"[:2000]
                client.set_flow_run_state(flow_run_id, Failed(message=message), force=True)
    except Exception as error:  # the API down: the run stays as it is, the log above says why
        log.warning("could not mark rollback run %s Failed: %s", flow_run_id, error)


def _requeue_orphans(
    client: Any,
    deployment_ids: list[UUID],
    older_than: float,
    marks: tuple[str, ...] = (HANDED_OVER, CLAIMED),
    running: set[UUID] | None = None,
) -> list[UUID]:
    """Runs taken (PENDING, with one of `marks` starting their message) but never started: SCHEDULED again.

    At start, any serve's mark: a process that stopped between taking a run and starting it left it PENDING,
    where no one else would ever start it (and the alert endpoint would keep answering with it). While serving,
    this process's own marks, for runs it is not running: a claim or a create whose answer was lost. Only after
    `older_than` seconds (the alert endpoint hands a run over within its launch time, far less). Started afresh,
    the run's own checks (the running version, the hold, the one-at-a-time slot) decide what it still has to do.
    """
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Scheduled
    from prefect.types._datetime import now

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=deployment_ids),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING])),
        ),
        limit=200,
    )
    requeued = []
    for run in runs:
        state = run.state
        message = (state.message or "") if state is not None else ""
        ours = message.startswith(marks) and run.id not in (running or set())
        if state is not None and ours and (now("UTC") - state.timestamp).total_seconds() >= older_than:
            client.set_flow_run_state(run.id, Scheduled(message="requeued: taken, never started"), force=True)
            log.warning("rollback run %s was left PENDING (taken, never started): scheduled again", run.id)
            requeued.append(run.id)
    return requeued


def _claim(client: Any, flow_run_id: UUID, mark: str) -> bool:
    """Propose PENDING: accepted for one claimant only (Prefect refuses PENDING after PENDING or RUNNING)."""
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Pending

    result = client.set_flow_run_state(flow_run_id, Pending(message=mark))
    return bool(result.status == SetStateStatus.ACCEPT)
