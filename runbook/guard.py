"""One rollback at a time per service and environment, whatever started it (UI, alert, schedule, shell).

A Prefect global concurrency limit named `rollback-<service>-<environment>` with one slot: a run takes
the slot before it changes or posts anything, and a second run that finds it taken ends at once
(Cancelled, with the reason) instead of waiting to roll back again later. The slot is a lease the
server takes back if the holder dies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError  # raised by the sync API too
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from runbook.errors import RunbookError


class RollbackInProgressError(RunbookError):
    """Another rollback of the same service and environment holds the slot."""

    step = "start"


def limit_name(service: str, environment: str) -> str:
    """The concurrency limit's name (Prefect limit names: letters, digits, dashes)."""
    return f"rollback-{service}-{environment}"


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


@contextmanager
def one_rollback_at_a_time(service: str, environment: str) -> Iterator[None]:
    """Hold the service's rollback slot for the block, or raise RollbackInProgressError at once."""
    name = limit_name(service, environment)
    ensure_limit(name)
    with ExitStack() as stack:
        try:
            # max_retries=0: a taken slot is an immediate answer, never a wait in a queue.
            stack.enter_context(concurrency(name, occupy=1, max_retries=0, strict=True, lease_duration=300))
        except ConcurrencySlotAcquisitionError as exc:
            # 423 Locked: the slot is held. Anything else (API down...) is not ours to reinterpret.
            if "423" not in str(exc):
                raise
            raise RollbackInProgressError(
                f"another rollback of {service} in {environment} is already running: this one stops here",
                hint="follow the running one in the Prefect UI (flow runs of `rollback`)",
            ) from None
        yield
