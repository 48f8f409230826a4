"""`commands.warm.WarmRuns`: runs claimed once, executed at once in the serving process, on a real Prefect server."""

from __future__ import annotations

import threading
import time
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Pending, Running

from commands.warm import CLAIMED, WarmRuns
from runbook.alerts.launcher import HANDED_OVER

pytestmark = pytest.mark.usefixtures("prefect_server")

EXECUTED: list[str] = []
_LOCK = threading.Lock()


@flow(name="warm-probe")
def warm_probe(label: str) -> str:
    with _LOCK:
        EXECUTED.append(label)
    time.sleep(0.2)  # long enough for a second claimant to try while it runs
    return label


def _deployment() -> UUID:
    return warm_probe.to_deployment(name="warm-probe").apply()


def _create(deployment_id: UUID, label: str) -> UUID:
    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment_id, parameters={"label": label}).id


def _wait_final(run_id: UUID, timeout: float = 60) -> StateType:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_final():
                return state.type
            time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end within {timeout} s")


def _history(run_id: UUID) -> list[tuple[str, str]]:
    with get_client(sync_client=True) as client:
        return [(s.type.value, s.message or "") for s in client.read_flow_run_states(run_id)]


def test_a_run_handed_to_two_claimants_runs_once() -> None:
    deployment_id = _deployment()
    first, second = WarmRuns(warm_probe, deployment_id), WarmRuns(warm_probe, deployment_id)
    run_id = _create(deployment_id, "handed-twice")
    try:
        assert first.take(run_id) and second.take(run_id)  # both accept the hand-off; only one may claim it
        assert _wait_final(run_id) == StateType.COMPLETED
        first.drain(timeout=30)
        second.drain(timeout=30)
    finally:
        first.drain(timeout=0)
        second.drain(timeout=0)
    assert EXECUTED.count("handed-twice") == 1
    pending = [message for kind, message in _history(run_id) if kind == "PENDING"]
    assert len(pending) == 1 and pending[0] in (first.claimed_mark, second.claimed_mark)


def test_the_watcher_claims_a_run_created_through_the_api() -> None:
    deployment_id = _deployment()
    warm = WarmRuns(warm_probe, deployment_id, poll_seconds=0.05)
    warm.start()
    try:
        run_id = _create(deployment_id, "from-the-api")
        assert _wait_final(run_id) == StateType.COMPLETED
    finally:
        warm.drain(timeout=30)
    assert EXECUTED.count("from-the-api") == 1


def test_a_run_already_running_elsewhere_is_left_alone() -> None:
    deployment_id = _deployment()
    run_id = _create(deployment_id, "running-elsewhere")
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Running(), force=True)  # another process has it
    warm = WarmRuns(warm_probe, deployment_id)
    assert warm.take(run_id)
    assert warm.drain(timeout=30) == []
    assert "running-elsewhere" not in EXECUTED
    assert [kind for kind, _ in _history(run_id)][-1] == "RUNNING"


def test_draining_waits_for_the_runs_in_progress_and_takes_no_new_one() -> None:
    deployment_id = _deployment()
    warm = WarmRuns(warm_probe, deployment_id)
    run_id = _create(deployment_id, "drained")
    assert warm.take(run_id)
    assert warm.drain(timeout=30) == []
    assert _wait_final(run_id, timeout=1) == StateType.COMPLETED  # finished before drain returned
    late = _create(deployment_id, "too-late")
    assert not warm.take(late)
    assert "too-late" not in EXECUTED


def test_a_run_a_stopped_serve_left_pending_is_run_at_the_next_start() -> None:
    deployment_id = _deployment()
    with get_client(sync_client=True) as client:
        handed = client.create_flow_run_from_deployment(
            deployment_id, parameters={"label": "orphan"}, state=Pending(message=f"{HANDED_OVER} (abc)")
        ).id
        foreign = client.create_flow_run_from_deployment(
            deployment_id, parameters={"label": "someone-else"}, state=Pending(message="a worker's")
        ).id
    warm = WarmRuns(warm_probe, deployment_id, poll_seconds=0.05, orphan_seconds=0)
    warm.start()
    try:
        assert _wait_final(handed) == StateType.COMPLETED
    finally:
        warm.drain(timeout=30)
    assert EXECUTED.count("orphan") == 1
    assert "someone-else" not in EXECUTED  # PENDING for another process: not this tool's to start
    assert [kind for kind, _ in _history(foreign)] == ["PENDING"]


def test_its_own_run_left_pending_by_a_lost_answer_is_run_while_serving() -> None:
    """A claim (or a create) that reached the server but whose answer was lost leaves the run PENDING with this
    process's mark: the watcher schedules it again and it runs, without waiting for serve to restart."""
    deployment_id = _deployment()
    warm = WarmRuns(warm_probe, deployment_id, poll_seconds=0.01, orphan_seconds=0)
    warm.start()
    time.sleep(0.5)  # past its start's look at any serve's runs: from now on, only its own
    with get_client(sync_client=True) as client:
        lost = client.create_flow_run_from_deployment(
            deployment_id, parameters={"label": "lost-claim"}, state=Pending(message=warm.claimed_mark)
        ).id
        foreign = client.create_flow_run_from_deployment(
            deployment_id, parameters={"label": "another-serve"}, state=Pending(message=f"{CLAIMED} (0123456789ab)")
        ).id
    try:
        assert _wait_final(lost) == StateType.COMPLETED
        time.sleep(0.5)  # more watcher rounds: the other serve's run stays its own
    finally:
        warm.drain(timeout=30)
    assert EXECUTED.count("lost-claim") == 1 and "another-serve" not in EXECUTED
    assert [kind for kind, _ in _history(foreign)] == ["PENDING"]
