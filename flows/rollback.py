"""The `rollback` flow: the seed's procedure, step by step, each step a Prefect task.

1. resolve the stable SHA (given, or the last known good)   -> tasks/resolve_sha.py
2. verify its image exists in the registry, keep its digest  -> tasks/verify_image.py
3. redeploy it through the environment's deploy target       -> tasks/deploy.py
4. check health (probes, error rate, key features)           -> tasks/health_check.py
5. tell the team in Slack, in one thread                     -> tasks/notify.py (flows/_slack.py)
6. write the post-mortem artifacts, whatever happened        -> tasks/postmortem.py
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Cancelled
from prefect.utilities.urls import url_for

from flows._hold import deploy_starting, hold_alert, previous_rollback
from flows._slack import Announcer
from flows._trigger import current_trigger
from runbook import background, messages
from runbook.approval import wait_for_approval
from runbook.choices import choice, configured_names
from runbook.config import RunbookConfig, load_config
from runbook.errors import DeployError, InvalidShaError, RollbackInProgressError, RunbookError, ShaError
from runbook.events import emit
from runbook.journal import Journal, describe_error, utcnow
from runbook.repository import UnfinishedRollout
from runbook.retry_log import collect_retries
from runbook.rollback_slot import one_rollback_at_a_time
from runbook.shas import normalize_sha
from runbook.targets import DeployRequest
from tasks.deploy import (
    close_rollout,
    deploy,
    find_unfinished_rollout,
    finish_deploy,
    mark_rolled_back,
    open_rollout,
    preflight_deploy,
)
from tasks.health_check import check_health, check_metric, check_smoke
from tasks.postmortem import write_postmortem
from tasks.resolve_sha import Resolution, resolve_sha
from tasks.verify_image import ImageCheck, verify_image

_SERVICES, _ENVIRONMENTS = configured_names()
if TYPE_CHECKING:
    ServiceName = str
    EnvironmentName = str
else:
    ServiceName = choice(_SERVICES)
    EnvironmentName = choice(_ENVIRONMENTS)


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


@dataclass(frozen=True)
class _Options:
    """The parameters that shape the procedure once the service and environment are known."""

    sha: str | None
    dry_run: bool
    approval_timeout: int | None  # None: no approval asked
    posts: bool
    slot_recorded: Callable[[], None] = lambda: None  # waits until the slot's holder is written down


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
    alert: dict[str, Any] | None = None,
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
        alert: The alert that started it (name, labels, link), set by the alert endpoint; such a run follows the
            rules of automatic rollbacks (one per incident).

    The configuration is the file `runbook serve` or the worker runs with ($RUNBOOK_CONFIG), never a parameter;
    who started the run is what the runbook knows (flows/_trigger.py); every rollback that changes something is
    announced in Slack.
    """
    config = load_config()
    config.environment(service, environment)  # unknown service or environment: fail before anything
    now = utcnow()
    record = Journal(
        service=service,
        environment=environment,
        trigger=current_trigger(alert),
        reason=reason,
        incident=incident,
        detected_at=detected_at or now,
        started_at=now,
        dry_run=dry_run,
        run_url=_run_url(),
        alert=alert,
        attempt=flow_run.run_count or 1,
    )
    try:  # the format needs no I/O: a malformed SHA is refused before the slot, Slack or GitHub
        sha = normalize_sha(sha) if sha and sha.strip() else None
    except InvalidShaError as exc:
        _refused(record, exc)
        raise
    # Drills report in the rehearsal's artifact; every other rollback that changes something is announced.
    posts = not dry_run and record.trigger != "drill"
    options = _Options(sha, dry_run, approval_timeout_seconds if require_approval else None, posts)
    with ExitStack() as stack:
        if not dry_run:
            try:
                slot = stack.enter_context(one_rollback_at_a_time(service, environment, flow_run.id))
            except RollbackInProgressError as exc:
                get_run_logger().warning(str(exc))
                return Cancelled(message=str(exc))
            if slot.released:
                record.note(f"released the rollback slot of {slot.released}, which can no longer hold it")
            options = replace(options, slot_recorded=slot.recorded)
        # One incident, one automatic rollback: a held alert stops here.
        held = hold_alert(config, record, options.posts)
        if held is not None:
            return held
        return _run(config, record, options)


def _run(config: RunbookConfig, record: Journal, options: _Options) -> RollbackSummary:
    """Run the procedure; whatever happens, tell Slack how it ended and write the post-mortem."""
    service, environment = record.service, record.environment
    if record.run_url:
        record.links["flow run"] = record.run_url
    ctx = messages.IncidentContext(
        service=service,
        environment=environment,
        reason=record.reason,
        incident=record.incident,
        mentions=tuple(config.service(service).slack.mentions),
        run_url=record.run_url,
        language=config.slack.language,
        alert=record.alert_line(),
        previous=previous_rollback(config, record),
    )
    slack = Announcer(config, record, ctx, enabled=options.posts)
    if not options.dry_run:
        emit("rollback", "started", service, environment, {"trigger": record.trigger, "reason": record.reason})
    try:
        with collect_retries(record):
            if options.sha is None:
                slack.incident()  # at once: the team hears of it while the version is chosen
            _procedure(config, record, slack, options)
    except Exception as exc:
        step = next((s.name for s in reversed(record.steps) if s.state == "failed"), "rollback")
        record.fail(step, describe_error(exc))
        # A given SHA refused (unknown, off the branch, running now) was checked before any post: none now either.
        if slack.announced or not isinstance(exc, ShaError):
            slack.failed(step, record.failure_reason or "")
        if not options.dry_run:
            emit("rollback", "failed", service, environment, {"step": step, "reason": record.failure_reason})
        raise
    finally:
        record.ended_at = utcnow()
        markdown = write_postmortem(record)
    if not options.dry_run:
        emit(
            "rollback",
            "succeeded",
            service,
            environment,
            {"sha": record.to_sha, "digest": record.digest, "time_to_recovery": record.time_to_recovery},
        )
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


def _procedure(config: RunbookConfig, record: Journal, slack: Announcer, options: _Options) -> None:
    """The seed's sections 3.1 to 3.3, in order."""
    service, environment = record.service, record.environment
    # A rollback that never finished (its run died, or this run is retried) is followed, never started again.
    unfinished = None if options.dry_run else _unfinished(config, record, options)
    with record.step("resolve-sha") as step:
        if unfinished is not None:
            resolution = Resolution(unfinished.sha, "", unfinished.from_sha, "unfinished rollback")
            step.detail = f"{resolution.short}: resuming rollback {unfinished.rollback_id}, never finished"
        else:
            resolution = resolve_sha(config, service, environment, options.sha)
            step.detail = f"{resolution.short} ({resolution.source}): {resolution.title}"
        record.from_sha, record.to_sha, record.sha_source = resolution.running, resolution.sha, resolution.source
        record.running_source = resolution.running_source
        if resolution.warning:
            record.warn(resolution.warning)
        if resolution.compare_url:
            record.links["changes rolled back"] = resolution.compare_url
    slack.incident()  # a given SHA once checked (already posted for the others): a refused one posts nothing

    with record.step("verify-image") as step:
        if unfinished is not None:
            # What the unfinished rollout was deploying, by digest: exactly that, whatever the tag says now.
            name = unfinished.image.split("@", 1)[0]
            image = ImageCheck(f"{name}:{unfinished.sha}", unfinished.digest, "recorded by the unfinished rollout")
            step.detail = f"{image.image} (recorded by rollback {unfinished.rollback_id})"
        else:
            image = verify_image(config, service, resolution.sha)
            step.detail = f"{image.image} = {image.digest}"
        record.image, record.digest = image.image, image.digest

    if options.dry_run:
        with record.step("preflight-deploy") as step:
            step.detail = preflight_deploy(config, service, environment)
        record.outcome = "dry-run"
        return

    if options.approval_timeout is not None:
        with record.step("approval") as step:
            approval = wait_for_approval(record, resolution.title, resolution.compare_url, options.approval_timeout)
            record.approval = f"{approval.approver or 'someone'}: {approval.comment or 'no comment'}"
            step.detail = f"approved by {record.approval}"

    request = DeployRequest(
        service,
        environment,
        resolution.sha,
        image.pinned,
        image.digest,
        record.reason,
        rollback_id=unfinished.rollback_id if unfinished else str(flow_run.id),
        resume_since=unfinished.created_at if unfinished else None,
    )
    # The intent is recorded BEFORE the deploy call (while the Slack post goes out), so that whatever happens to
    # this process, the next attempt finds the deploy it may have started.
    opening = None if unfinished else open_rollout.submit(config, request, record.run_url, resolution.running)
    slack.rollback_started(resolution.sha, resolution.compare_url)
    options.slot_recorded()  # a Retry after a crash during the deploy must be able to take the slot back
    rollout = unfinished.deployment_id if unfinished else _rollout_id(opening, record)
    # The hold's record (alert runs) is written alongside the deploy: a run that dies before it lands leaves an
    # unfinished rollout, which the next run follows anyway (never a second rollback further back).
    writing = background.start("hold-record", deploy_starting, record, slack.thread)
    try:
        with record.step("deploy") as step:
            result = deploy(config, request)
            step.detail = result.detail
            step.state = "skipped" if result.skipped else "completed"
            if result.link:
                record.links["deploy"] = result.link
            if not result.confirmed:
                record.warn(f"deploy not confirmed by {result.target}: {result.detail}")
        _verify(config, record)
        writing.join(timeout=30)
    except Exception as exc:
        writing.join(timeout=30)
        if rollout is not None:
            # `error`: this deploy surely did nothing (it never went live); `failure`: it may have.
            nothing = isinstance(exc, DeployError) and exc.changed is False
            close_rollout(
                config,
                service,
                rollout,
                "error" if nothing else "failure",
                f"rollback failed: {record.steps[-1].name}" + (" (not deployed)" if nothing else ""),
                record.run_url,
            )
        raise
    record.outcome = "recovered"
    if rollout is not None:
        close_rollout(config, service, rollout, "success", f"rollback to {resolution.short}: healthy", record.run_url)
    rolled_back_from = resolution.running if resolution.running != resolution.sha else None
    # A resumed rollout was deployed by the run that died: its version was rolled back from all the same.
    if rolled_back_from and (not result.skipped or unfinished) and record.trigger != "drill":
        # The version rolled back from must never be chosen as a last known good (drills roll back healthy ones).
        mark_rolled_back(
            config, service, environment, rolled_back_from, record.reason, resolution.running_deployment_id
        )
    if not result.skipped:
        cleanup = finish_deploy(config, request, result)
        if cleanup and cleanup.startswith("clean-up failed"):
            record.warn(cleanup)

    ttr = record.time_to_recovery or 0.0
    get_run_logger().info(
        "recovered: %s/%s runs %s, time to recovery %.1f s", service, environment, resolution.short, ttr
    )
    slack.recovered(resolution.sha, image.digest, ttr, result.link)


def _unfinished(config: RunbookConfig, record: Journal, options: _Options) -> UnfinishedRollout | None:
    """The unfinished rollout to follow, if any: not when a person asked for another version explicitly."""
    try:
        found = find_unfinished_rollout(config, record.service, record.environment)
    except RunbookError as exc:
        record.warn(f"could not check for an unfinished rollback: {describe_error(exc)}")
        return None
    if found is None:
        return None
    wanted = options.sha.strip().lower() if options.sha else None
    if wanted and not found.sha.startswith(wanted):
        record.warn(
            f"rollback {found.rollback_id} to {found.sha[:7]} never finished; {wanted[:7]} was asked for explicitly"
        )
        return None
    record.note(f"resuming rollback {found.rollback_id} to {found.sha[:7]} (recorded {found.created_at:%H:%M:%S})")
    return found


def _verify(config: RunbookConfig, record: Journal) -> None:
    """Seed 3.3: health endpoints, then the error rate, then the key features."""
    service, environment = record.service, record.environment
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


def _rollout_id(opening: PrefectFuture[int | None] | None, record: Journal) -> int | None:
    """The GitHub deployment id the record was opened with, or None (never fails the rollback)."""
    if opening is None:
        return None
    outcome = opening.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        record.warn(f"GitHub deployment record: {describe_error(outcome)}")
        return None
    return outcome


def _refused(record: Journal, exc: RunbookError) -> None:
    """A run refused on its parameters before it began: the post-mortem says why; nothing was posted or changed."""
    record.fail("resolve-sha", describe_error(exc))
    record.ended_at = utcnow()
    write_postmortem(record)


def _run_url() -> str | None:
    """The run's page in the Prefect UI; None when PREFECT_UI_URL is not set."""
    return url_for("flow-run", obj_id=flow_run.id) if flow_run.id else None
