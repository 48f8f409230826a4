"""The `rollback` flow: the seed's procedure, step by step, each step a Prefect task.

1. resolve the stable SHA (given, or the last known good)   -> tasks/resolve_sha.py
2. verify its image exists in the registry, keep its digest  -> tasks/verify_image.py
3. redeploy it through the environment's deploy target       -> tasks/deploy.py
4. check health until it is stable, record the rollout       -> tasks/health_check.py
5. tell the team in Slack, in one thread                     -> tasks/notify.py
6. write the post-mortem artifacts, whatever happened        -> tasks/postmortem.py
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, pause_flow_run
from prefect.client.schemas.objects import State
from prefect.exceptions import FlowPauseTimeout
from prefect.runtime import flow_run
from prefect.states import Cancelled

from runbook import messages
from runbook.approval import Approval, approval_description
from runbook.choices import choice, configured_names
from runbook.config import RunbookConfig, load_config
from runbook.errors import ApprovalError
from runbook.guard import RollbackInProgressError, one_rollback_at_a_time
from runbook.record import RollbackRecord, describe_error, utcnow
from runbook.targets import DeployRequest
from tasks.deploy import deploy, finish_deploy, preflight_deploy
from tasks.health_check import check_health, check_metric, check_smoke, record_healthy_rollout
from tasks.notify import Posted, notify_incident, notify_outcome, notify_rollback_started
from tasks.postmortem import write_postmortem
from tasks.resolve_sha import resolve_sha
from tasks.verify_image import verify_image


@dataclass(frozen=True)
class RollbackSummary:
    """What the run returns: the outcome and the figures a person wants first."""

    outcome: str
    service: str
    environment: str
    from_sha: str | None
    to_sha: str | None
    digest: str | None
    time_to_recovery: float | None
    step_seconds: dict[str, float]
    postmortem: str


_SERVICES, _ENVIRONMENTS = configured_names()
if TYPE_CHECKING:
    ServiceName = str
    EnvironmentName = str
else:
    ServiceName = choice(_SERVICES)
    EnvironmentName = choice(_ENVIRONMENTS)


@flow(name="rollback", flow_run_name="rollback-{service}-{environment}", timeout_seconds=4 * 3600)
def rollback(
    service: ServiceName,
    environment: EnvironmentName,
    sha: str | None = None,
    reason: str = "",
    incident: str | None = None,
    dry_run: bool = False,
    require_approval: bool = False,
    approval_timeout_seconds: int = 900,
    detected_at: datetime | None = None,
    trigger: str = "manual",
    notify: bool = True,
    config_path: str | None = None,
) -> RollbackSummary | State:
    """Roll a service back to its last stable version, telling everyone, and write the post-mortem.

    Args:
        service: The configured service to roll back.
        environment: The environment to roll back (e.g. production).
        sha: The stable commit to return to (7 to 40 hex characters). Leave empty for the last known good version.
        reason: Why, in a few words (shown in Slack and in the post-mortem).
        incident: Incident id or link, if any.
        dry_run: Resolve the SHA, verify the image and check the deploy target only; change and post nothing.
        require_approval: Pause before deploying until a person approves in the Prefect UI (Resume).
        approval_timeout_seconds: How long to wait for that approval before giving up (nothing deployed).
        detected_at: When the incident started (an alert's startsAt); default: now.
        trigger: Who started the run: manual, alert, schedule, drill.
        notify: Tell Slack (rehearsal drills turn it off and report on their own).
        config_path: The configuration file; default $RUNBOOK_CONFIG or ./runbook.yaml.
    """
    config = load_config(config_path)
    config.environment(service, environment)  # unknown service or environment: fail before anything
    with ExitStack() as stack:
        if not dry_run:
            try:
                stack.enter_context(one_rollback_at_a_time(service, environment))
            except RollbackInProgressError as exc:
                get_run_logger().warning(str(exc))
                return Cancelled(message=str(exc))
        params = _Params(
            service,
            environment,
            sha,
            reason,
            incident,
            dry_run,
            approval_timeout_seconds if require_approval else None,
            detected_at,
            trigger,
            notify and not dry_run,
        )
        return _run(config, params)


@dataclass(frozen=True)
class _Params:
    service: str
    environment: str
    sha: str | None
    reason: str
    incident: str | None
    dry_run: bool
    approval_timeout: int | None
    detected_at: datetime | None
    trigger: str
    posts: bool


def _run(config: RunbookConfig, p: _Params) -> RollbackSummary:
    service, environment, reason, incident = p.service, p.environment, p.reason, p.incident
    now = utcnow()
    record = RollbackRecord(
        service=service,
        environment=environment,
        trigger=p.trigger,
        reason=reason,
        incident=incident,
        detected_at=p.detected_at or now,
        started_at=now,
        dry_run=p.dry_run,
        run_url=_run_url(),
    )
    if record.run_url:
        record.links["flow run"] = record.run_url
    ctx = messages.IncidentContext(
        service=service,
        environment=environment,
        reason=reason,
        incident=incident,
        mentions=tuple(config.service(service).slack.mentions),
        run_url=record.run_url,
        language=config.slack.language,
    )
    thread = Posted(None, None, "nothing posted (dry run or notify off)")
    try:
        if p.posts:
            thread = notify_incident(config, ctx, messages.incident_message(ctx))
            _slack_outcome(record, thread)
        _procedure(config, record, ctx, thread, p.sha, p.approval_timeout, p.posts)
    except Exception as exc:
        step = next((s.name for s in reversed(record.steps) if s.state == "failed"), "rollback")
        record.fail(step, describe_error(exc))
        if p.posts:
            _slack_outcome(
                record,
                notify_outcome(config, ctx, thread, messages.failure_message(ctx, step, record.failure_reason or "")),
            )
        raise
    finally:
        record.ended_at = utcnow()
        markdown = write_postmortem(record)
    return RollbackSummary(
        record.outcome,
        service,
        environment,
        record.from_sha,
        record.to_sha,
        record.digest,
        record.time_to_recovery,
        {s.name: s.seconds for s in record.steps},
        markdown,
    )


def _procedure(
    config: RunbookConfig,
    record: RollbackRecord,
    ctx: messages.IncidentContext,
    thread: Posted,
    sha: str | None,
    approval_timeout: int | None,
    posts: bool,
) -> None:
    """The seed's sections 3.1 to 3.3 and 4, in order."""
    service, environment = record.service, record.environment
    with record.step("resolve-sha") as step:
        resolution = resolve_sha(config, service, environment, sha)
        record.from_sha, record.to_sha, record.sha_source = (
            resolution.running,
            resolution.sha,
            resolution.source,
        )
        step.detail = f"{resolution.short} ({resolution.source}): {resolution.title}"
        if resolution.warning:
            record.warn(resolution.warning)
        if resolution.compare_url:
            record.links["changes rolled back"] = resolution.compare_url

    with record.step("verify-image") as step:
        image = verify_image(config, service, resolution.sha)
        record.image, record.digest = image.image, image.digest
        step.detail = f"{image.image} = {image.digest}"

    if record.dry_run:
        with record.step("preflight-deploy") as step:
            step.detail = preflight_deploy(config, service, environment)
        record.outcome = "dry-run"
        return

    if approval_timeout is not None:
        with record.step("approval") as step:
            approval = wait_for_approval(record, resolution.title, resolution.compare_url, approval_timeout)
            record.approval = f"{approval.approver or 'someone'}: {approval.comment or 'no comment'}"
            step.detail = f"approved by {record.approval}"

    if posts:
        started = messages.rollback_started_message(ctx, resolution.sha, resolution.compare_url)
        _slack_outcome(record, notify_rollback_started(config, ctx, thread, started))
    with record.step("deploy") as step:
        request = DeployRequest(
            service, environment, resolution.sha, image.pinned, image.digest, record.reason, str(flow_run.id)
        )
        result = deploy(config, request)
        step.detail = result.detail
        step.state = "skipped" if result.skipped else "completed"
        if result.link:
            record.links["deploy"] = result.link

    with record.step("health-check") as step:
        report = check_health(config, service, environment)
        record.healthy_at = utcnow()
        record.health_summary = report.summary()
        step.detail = report.verdict.reason
    env = config.environment(service, environment)
    if env.metric is not None:
        with record.step("metric-check") as step:
            record.metric_summary = check_metric(config, service, environment)
            step.detail = record.metric_summary[0] if record.metric_summary else ""
    if env.smoke:
        with record.step("smoke-checks") as step:
            record.smoke_summary = check_smoke(config, service, environment)
            step.detail = record.smoke_summary[0] if record.smoke_summary else ""
    record.outcome = "recovered"
    if not result.skipped:
        cleanup = finish_deploy(config, request, result)
        if cleanup and cleanup.startswith("clean-up failed"):
            record.warn(cleanup)
    record_healthy_rollout(config, service, environment, resolution.sha, image.digest, record.run_url)

    ttr = record.time_to_recovery or 0.0
    get_run_logger().info(
        "recovered: %s/%s runs %s, time to recovery %.1f s", service, environment, resolution.short, ttr
    )
    if posts:
        recovered = messages.recovered_message(ctx, resolution.sha, image.digest, ttr, result.link)
        _slack_outcome(record, notify_outcome(config, ctx, thread, recovered))


def wait_for_approval(record: RollbackRecord, title: str, compare_url: str | None, timeout: int) -> Approval:
    """Pause the run until a person approves or rejects it in the Prefect UI (ApprovalError unless approved)."""
    description = approval_description(
        record.service,
        record.environment,
        record.from_sha,
        record.to_sha or "",
        title,
        record.image or "",
        record.digest or "",
        compare_url,
    )
    get_run_logger().info("waiting up to %d s for a person to approve the rollback (Resume in the UI)", timeout)
    try:
        approval = pause_flow_run(
            wait_for_input=Approval.with_initial_data(description=description), timeout=timeout, poll_interval=1
        )
    except FlowPauseTimeout:
        raise ApprovalError(
            f"nobody approved the rollback within {timeout} s: nothing was deployed",
            hint="run it again, or without require_approval",
        ) from None
    if not approval.approve:
        who = approval.approver or "someone"
        raise ApprovalError(
            f"{who} rejected the rollback"
            + (f" ({approval.comment})" if approval.comment else "")
            + ": nothing was deployed",
            hint="choose another SHA or fix forward",
        )
    return approval


def _run_url() -> str | None:
    # Prefect builds the link from PREFECT_UI_URL; without one it would print "None/flow-runs/...".
    url = flow_run.ui_url
    return url if url and url.startswith("http") else None


def _slack_outcome(record: RollbackRecord, posted: Posted) -> None:
    if posted.ok:
        record.note("Slack message posted")
    else:
        record.warn(f"Slack: {posted.error}")
