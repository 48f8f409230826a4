"""One rollback at a time per service and environment, whatever started it (UI, alert, schedule, shell).

A Prefect global concurrency limit named `rollback-<service>-<environment>` with one slot: a run takes
the slot before it changes or posts anything, and a second run that finds it taken ends at once
(Cancelled, with the reason) instead of waiting to roll back again later.

The slot is a lease that the server takes back only when it expires (minutes) if its holder dies. So the
holder is written down next to the limit (a Prefect Variable `rollback-slot-<service>-<environment>`: lease
id and flow run id). A run that finds the slot taken looks at that holder: when it is the same flow run (a
Retry of a run whose process was killed) or a flow run that has ended (Crashed, Failed...), the lease is
stale and is released at once; a live holder keeps it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError  # raised by the sync API too
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.concurrency._sync import acquire_concurrency_slots_with_lease, release_concurrency_slots_with_lease
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.variables import Variable

from runbook import background
from runbook.errors import RollbackInProgressError
from runbook.prefect_calls import put_variable

LEASE_SECONDS = 300
#: Flow run state types whose run may still hold its slot; any other (Completed, Failed, Crashed...) cannot.
_LIVE_STATES = frozenset({"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"})


def _name(prefix: str, service: str, environment: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", f"{prefix}-{service}-{environment}".lower())


def limit_name(service: str, environment: str) -> str:
    """The concurrency limit's name (Prefect limit names: letters, digits, dashes)."""
    return _name("rollback", service, environment)


def holder_variable(service: str, environment: str) -> str:
    """The Prefect Variable that says which flow run holds the slot, with which lease."""
    return _name("rollback-slot", service, environment)


def ensure_limit(name: str) -> None:
    """Create the one-slot limit if it does not exist yet (idempotent)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        with suppress(ObjectAlreadyExists):  # another run created it in between
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def _acquire(name: str, flow_run_id: UUID | None) -> UUID | None:
    """The lease id, or None when the slot is held (423)."""
    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id) if flow_run_id else None
    try:
        # max_retries=0: a taken slot is an immediate answer, never a wait in a queue.
        response = acquire_concurrency_slots_with_lease(
            [name], 1, max_retries=0, strict=True, lease_duration=LEASE_SECONDS, holder=holder
        )
    except ConcurrencySlotAcquisitionError as exc:
        # 423 Locked: the slot is held. Anything else (API down...) is not ours to reinterpret.
        if "423" not in str(exc):
            raise
        return None
    return response.lease_id


def stale_holder(holder: Any, flow_run_id: UUID | None, holder_state: str | None) -> bool:
    """Whether the recorded holder's lease is stale: ours (a Retry after a crash) or of a run that has ended."""
    if not isinstance(holder, dict) or not holder.get("lease_id"):
        return False
    if flow_run_id is not None and holder.get("flow_run_id") == str(flow_run_id):
        return True
    return holder_state is not None and holder_state not in _LIVE_STATES


def _release_stale(service: str, environment: str, flow_run_id: UUID | None) -> str | None:
    """Release the recorded holder's lease if it is stale; what was released, or None."""
    holder = Variable.get(holder_variable(service, environment), default=None)
    state: str | None = None
    if isinstance(holder, dict) and holder.get("flow_run_id"):
        with get_client(sync_client=True) as client:
            try:
                run = client.read_flow_run(UUID(str(holder["flow_run_id"])))
                state = run.state_type.value if run.state_type else None
            except (ObjectNotFound, ValueError):
                state = "DELETED"
    if not stale_holder(holder, flow_run_id, state):
        return None
    assert isinstance(holder, dict)
    release_concurrency_slots_with_lease(UUID(str(holder["lease_id"])))
    return f"flow run {holder['flow_run_id']} ({state or 'this run, retried'})"


@contextmanager
def one_rollback_at_a_time(service: str, environment: str, flow_run_id: UUID | None = None) -> Iterator[Slot]:
    """Hold the service's rollback slot for the block, or raise RollbackInProgressError at once.

    Yields the `Slot`: what stale holder was released to get it (for the run's journal), and `recorded()`,
    which waits until its holder is written down: call it before changing anything outside.
    """
    name = limit_name(service, environment)
    ensure_limit(name)
    released = None
    lease_id = _acquire(name, flow_run_id)
    if lease_id is None:
        released = _release_stale(service, environment, flow_run_id)
        lease_id = _acquire(name, flow_run_id) if released else None
    if lease_id is None:
        raise RollbackInProgressError(
            f"another rollback of {service} in {environment} is already running: this one stops here",
            hint="follow the running one in the Prefect UI (flow runs of `rollback`)",
        )
    holder = {"lease_id": str(lease_id), "flow_run_id": str(flow_run_id or "")}
    # Written alongside the run's first steps (see runbook/background.py), and waited for before the deploy: a
    # Retry after a crash during the deploy must find it, or it would be locked out until the lease expires.
    writing = background.start("slot-holder", _write_holder, holder_variable(service, environment), holder)
    try:
        with maintain_concurrency_lease(lease_id, LEASE_SECONDS, raise_on_lease_renewal_failure=True):
            yield Slot(released, lambda: writing.join(timeout=30))
    finally:
        writing.join(timeout=30)
        release_concurrency_slots_with_lease(lease_id)


@dataclass(frozen=True)
class Slot:
    """The rollback slot a run holds."""

    released: str | None  # the stale holder whose lease was taken back to get it, if any
    recorded: Callable[[], None]  # waits until the holder is written down (before changing anything outside)


def _write_holder(name: str, holder: dict[str, str]) -> None:
    try:
        put_variable(name, holder, ["runbook"])
    except Exception:  # a Retry after a crash would wait for the lease to expire: worse, not wrong
        logging.getLogger(__name__).warning("could not write down the holder of the rollback slot %s", name)
