"""One rollback at a time per service and environment, and the approval pause (real Prefect test server)."""

from __future__ import annotations

import threading
import time
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from flows.rollback import rollback
from runbook.config import CONFIG_ENV_VAR
from runbook.hold import variable_name
from sandbox.world import ENVIRONMENT, SERVICE, Sandbox

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(autouse=True)
def _configured(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's configuration as $RUNBOOK_CONFIG: what the flows of this process read."""
    monkeypatch.setenv(CONFIG_ENV_VAR, str(sandbox.config_path))


def _in_thread(**parameters: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        out["state"] = rollback(service=SERVICE, environment=ENVIRONMENT, return_state=True, **parameters)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def _paused_run(reason: str, timeout: float = 30) -> UUID:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
            for run in runs:
                if run.parameters.get("reason") == reason:
                    return run.id
            time.sleep(0.2)
    raise AssertionError("the run never paused for approval")


def test_two_concurrent_rollbacks_of_one_service_deploy_once(sandbox: Sandbox) -> None:
    sandbox.github.run_step_seconds = 2.0  # the first rollback's deploy takes a while
    first = _in_thread(reason="alert 1")
    deadline = time.monotonic() + 60
    while not sandbox.slack.messages and time.monotonic() < deadline:
        time.sleep(0.05)  # the first run holds the slot once it has posted the incident
    second = _in_thread(reason="alert 2")
    threads = [first, second]
    for thread, _ in threads:
        thread.join(timeout=120)
    states = sorted(out["state"].type.value for _, out in threads)
    assert states == ["CANCELLED", "COMPLETED"], states
    cancelled = next(out["state"] for _, out in threads if out["state"].is_cancelled())
    assert "already running" in str(cancelled.message)
    assert len(sandbox.github.dispatches()) == 1
    # The refused run posted nothing: one thread, one incident message.
    assert len([m for m in sandbox.slack.messages if m.thread_ts is None]) == 1
    # The slot is free again: a later rollback is not refused.
    sandbox.github.run_step_seconds = 0.05
    later = rollback(service=SERVICE, environment=ENVIRONMENT, sha=sandbox.commits.all[0], return_state=True)
    assert later.is_completed(), later.message


def test_rejected_approval_deploys_nothing(sandbox: Sandbox) -> None:
    reason = f"approval {uuid4()}"
    thread, out = _in_thread(reason=reason, require_approval=True, approval_timeout_seconds=60)
    run_id = _paused_run(reason)
    assert sandbox.github.dispatches() == []
    resume_flow_run(run_id, run_input={"approve": False, "approver": "alice", "comment": "not this one"})
    thread.join(timeout=60)
    state = out["state"]
    assert state.is_failed() and "alice rejected the rollback (not this one)" in str(state.message)
    assert sandbox.github.dispatches() == [] and sandbox.app.version == sandbox.commits.broken
    assert "*approval*" in sandbox.slack.messages[-1].text


def test_approved_rollback_deploys_and_records_who(sandbox: Sandbox) -> None:
    reason = f"approval {uuid4()}"
    thread, out = _in_thread(reason=reason, require_approval=True, approval_timeout_seconds=60)
    run_id = _paused_run(reason)
    resume_flow_run(run_id, run_input={"approve": True, "approver": "bob", "comment": "go"})
    thread.join(timeout=60)
    state = out["state"]
    assert state.is_completed(), state.message
    assert sandbox.app.version == sandbox.commits.last_known_good and len(sandbox.github.dispatches()) == 1
    assert "approved by bob: go" in state.result().postmortem


def test_approval_timeout_deploys_nothing(sandbox: Sandbox) -> None:
    state = rollback(
        service=SERVICE,
        environment=ENVIRONMENT,
        require_approval=True,
        approval_timeout_seconds=2,
        return_state=True,
    )
    # The server fails a pause that timed out itself; the reason is in the escalation and the post-mortem.
    assert state.is_failed()
    assert "nobody approved the rollback within 2 s" in sandbox.slack.messages[-1].text
    assert sandbox.github.dispatches() == []


def _run_with_context(context: dict[str, Any]) -> Any:
    """A `rollback` run created through the API with this run context, run here (as a runner would)."""
    from prefect.flow_engine import run_flow_sync

    with get_client(sync_client=True) as client:
        created = client.create_flow_run(
            rollback, parameters={"service": SERVICE, "environment": ENVIRONMENT}, context=context
        )
    return run_flow_sync(rollback, flow_run=created, parameters=created.parameters, return_type="state")


def test_a_malformed_alert_context_fails_the_run_before_anything(sandbox: Sandbox) -> None:
    # Only the alert endpoint sets it; whoever else does gets a clear refusal, and nothing changes or is posted.
    state = _run_with_context({"runbook_alert": {"name": "HighErrorRate", "labels": "not a mapping"}})
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "alert context is malformed" in message and "starts_at" in message and "labels" in message
    assert sandbox.slack.messages == [] and sandbox.github.dispatches() == []
    assert sandbox.app.version == sandbox.commits.broken


def test_an_alert_in_the_run_context_makes_an_automatic_rollback(sandbox: Sandbox) -> None:
    started = "2026-08-20T10:12:30.123000+00:00"
    alert = {"name": "HighErrorRate", "labels": {"service": SERVICE}, "starts_at": started, "group_key": "g"}
    try:
        state = _run_with_context({"runbook_alert": alert})
    finally:  # the hold it leaves (one incident, one automatic rollback) must not hold other tests' alerts
        with get_client(sync_client=True) as client:
            if client.read_variable_by_name(variable_name(SERVICE, ENVIRONMENT)) is not None:
                client.delete_variable_by_name(variable_name(SERVICE, ENVIRONMENT))
    summary = state.result()
    assert summary.outcome == "recovered" and sandbox.app.version == sandbox.commits.last_known_good
    # Detected when the alert started (its time to recovery counts from then), and the alert named everywhere.
    assert "**Trigger:** alert" in summary.postmortem and "HighErrorRate" in summary.postmortem
    assert "2026-08-20 10:12:30.123 UTC" in summary.postmortem
    assert any("HighErrorRate" in m.text for m in sandbox.slack.messages)
