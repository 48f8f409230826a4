"""Whose rollback slot may be taken back: a pure judgement, then the real thing on a Prefect server."""

from __future__ import annotations

from uuid import uuid4

import pytest
from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

from runbook.rollback_slot import (
    LEASE_SECONDS,
    RollbackInProgressError,
    ensure_limit,
    limit_name,
    one_rollback_at_a_time,
    stale_holder,
)

ME, OTHER = uuid4(), uuid4()


def holder(run: object) -> dict[str, str]:
    return {"lease_id": str(uuid4()), "flow_run_id": str(run)}


def test_a_retry_of_the_holder_takes_its_own_stale_slot_back() -> None:
    assert stale_holder(holder(ME), ME, "RUNNING")  # the run's process died; this is its Retry


def test_a_holder_that_ended_cannot_hold_the_slot() -> None:
    for state in ("CRASHED", "FAILED", "COMPLETED", "CANCELLED", "DELETED"):
        assert stale_holder(holder(OTHER), ME, state), state


def test_a_live_holder_keeps_it() -> None:
    for state in ("RUNNING", "PENDING", "PAUSED", "SCHEDULED", "CANCELLING"):
        assert not stale_holder(holder(OTHER), ME, state), state
    assert not stale_holder(None, ME, None) and not stale_holder({"flow_run_id": str(ME)}, ME, None)


@pytest.mark.usefixtures("prefect_server")
def test_a_lease_without_a_recorded_holder_is_never_taken() -> None:
    name = limit_name("guard", "test")
    ensure_limit(name)
    lease = acquire_concurrency_slots_with_lease([name], 1, max_retries=0, strict=True, lease_duration=LEASE_SECONDS)
    assert lease.lease_id
    with pytest.raises(RollbackInProgressError), one_rollback_at_a_time("guard", "test", ME):
        pass
