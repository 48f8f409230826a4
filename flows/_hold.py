"""How the rollback flow keeps one incident to one automatic rollback (the decisions are in runbook/hold.py).

- `hold_alert`: at the start of an alert's run (slot taken), held or not; held: reply in the rollback's thread.
- `previous_rollback`: at the start of a manual run, the line saying an automatic rollback just happened.
- `deploy_starting`: an alert's run writes down its rollback when it deploys (its end is its flow run's), with
  its Slack thread once the root is posted (the delivery is beside the rollback: flows/_slack.py).

None of them ever fails a rollback that goes on, except `hold_alert` when the record cannot be read: an
alert's run does not roll back blindly over an automatic rollback it cannot see (the slot it holds needs the
same Prefect API anyway).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled
from prefect.utilities.urls import url_for

from flows._slack import Root
from runbook import hold, messages
from runbook.config import AlertSettings, RunbookConfig
from runbook.errors import HoldUnknownError
from runbook.events import emit
from runbook.journal import Journal, describe_error, utcnow
from runbook.messages import Language
from runbook.slack import Posted, SlackPoster
from tasks.notify import notify_thread

ROOT_WAIT_SECONDS = 10.0
"""How long an alert's run waits, beside its deploy, for a Slack root still on its way (joined within 30 s)."""


def hold_period(config: RunbookConfig) -> timedelta:
    """`alerts.hold_minutes` (its default without an alerts section)."""
    minutes = config.alerts.hold_minutes if config.alerts else AlertSettings.model_fields["hold_minutes"].default
    return timedelta(minutes=minutes)


def hold_alert(period: timedelta, language: Language, record: Journal, slack: SlackPoster | None) -> State | None:
    """For an alert's run: None to go on, or the final state of a held run (Cancelled, named Held).

    `slack`: where to tell the automatic rollback's thread; None when this run posts nothing.
    """
    if record.trigger != "alert" or record.dry_run:
        return None
    service, environment = record.service, record.environment
    try:
        with get_client(sync_client=True) as client:
            last = hold.read_last(client, service, environment)
    except Exception as exc:
        raise HoldUnknownError(
            f"cannot read the record of the last automatic rollback of {service}/{environment} "
            f"({describe_error(exc)}): not rolling back blindly",
            hint="check the Prefect API, then start the rollback by hand if it is still needed",
        ) from None
    reason = hold.hold_reason(last, record.detected_at, utcnow(), period, run_id=_run_id())
    if reason is None or last is None:
        return None
    logger = get_run_logger()
    alert = record.alert
    group = hold.group_id(alert.group_key, list(alert.fingerprints)) if alert else hold.group_id("", [])
    if group in last.held_groups:
        logger.warning("held: %s; this alert group was already told in the rollback's thread", reason)
    else:
        logger.warning("held: %s; the rollback's thread is told that a person decides", reason)
        # Written before posting, while the run is quiet: on SQLite an update racing the server's own writes
        # of task states is refused ("database is locked") and retried by the client seconds later.
        _remember(last.told(group), logger)
        if slack is not None:
            text = messages.held_message(language, last.to_sha, last.run_url, record.alert_line(), _start_url())
            if not notify_thread(slack, Posted(last.channel, last.thread_ts), text).ok:
                _remember(last, logger)  # not told after all: the group's next notification tries again
    emit("rollback", "held", service, environment, {"reason": reason, "rollback_run": last.flow_run_id})
    return Cancelled(
        name="Held",
        message=f"held: {reason}. No further automatic rollback: a person decides "
        f"(automatic rollback: {last.run_url or last.flow_run_id})",
    )


def previous_rollback(period: timedelta, language: Language, record: Journal) -> str | None:
    """For a manual run: the root message's line saying an automatic rollback just happened (also a warning)."""
    if record.trigger != "manual":
        return None
    try:
        with get_client(sync_client=True) as client:
            last = hold.read_last(client, record.service, record.environment)
    except Exception as exc:
        record.warn(f"could not tell whether an automatic rollback just happened: {describe_error(exc)}")
        return None
    if last is None or not hold.is_recent(last, utcnow(), period):
        return None
    at = last.ended_at or last.deploy_started_at
    record.warn(
        f"an automatic rollback of {record.service}/{record.environment} just happened: to {last.to_sha[:7]} "
        f"at {at:%Y-%m-%d %H:%M:%S} UTC ({last.run_url or 'flow run ' + last.flow_run_id})"
    )
    return messages.previous_rollback_line(language, last.to_sha, at, last.run_url)


def deploy_starting(record: Journal, thread: Root) -> None:
    """For an alert's run about to deploy: write it down as the last automatic rollback (held alerts reply to it).

    Written at once, Slack or not: the hold never waits for Slack. When the thread's root is still on its way
    (Slack slow or down), the record gets its thread once it is posted, if that happens within ROOT_WAIT_SECONDS.
    """
    run_id = _run_id()
    if record.trigger != "alert" or record.dry_run or record.to_sha is None or run_id is None:
        return
    settled = thread.settled
    last = _write_down(record, run_id, thread.known)
    if last is None or settled or last.thread_ts is not None:
        return
    root = thread.wait(ROOT_WAIT_SECONDS)
    if not root.threaded:
        return
    try:
        with get_client(sync_client=True) as client:
            now = hold.read_last(client, record.service, record.environment)
            if now is None or now.flow_run_id != run_id:
                return  # no longer this run's record: nothing of ours to complete
        hold.write_last(replace(now, channel=root.channel, thread_ts=root.ts))
    except Exception as exc:
        record.warn(f"the automatic rollback's Slack thread was not written down ({describe_error(exc)})")
    else:
        record.note("the automatic rollback's Slack thread written down (its root was posted after the record)")


def _write_down(record: Journal, run_id: str, root: Posted) -> hold.LastRollback | None:
    """Write this run down as the last automatic rollback: what was written, or None (a warning)."""
    assert record.to_sha is not None
    service, environment = record.service, record.environment
    try:
        with get_client(sync_client=True) as client:
            earlier = hold.read_last(client, service, environment)
            if earlier is not None and earlier.flow_run_id == run_id:  # a Retry of this rollback: same record
                last = replace(earlier, to_sha=record.to_sha, ended_at=None)
            else:
                last = hold.LastRollback(
                    service=service,
                    environment=environment,
                    flow_run_id=run_id,
                    run_url=record.run_url,
                    to_sha=record.to_sha,
                    deploy_started_at=utcnow(),
                )
            if last.thread_ts is None and root.threaded:
                last = replace(last, channel=root.channel, thread_ts=root.ts)
        hold.write_last(last)
    except Exception as exc:
        record.warn(
            f"the automatic rollback was not written down ({describe_error(exc)}): "
            "a later alert of this incident may start another rollback"
        )
        return None
    record.note(f"written down as the last automatic rollback ({hold.variable_name(service, environment)})")
    return last


def _remember(last: hold.LastRollback, logger: Any) -> None:
    try:
        hold.write_last(last)
    except Exception as exc:
        logger.warning("could not write down which alert groups were told: %s", describe_error(exc))


def _run_id() -> str | None:
    return str(flow_run.id) if flow_run.id else None


def _start_url() -> str | None:
    """The deployment's run form in the Prefect UI (where a person starts a rollback by hand)."""
    deployment_id = deployment.id
    page = url_for("deployment", obj_id=deployment_id) if deployment_id else None
    return f"{page}/run" if page else None
