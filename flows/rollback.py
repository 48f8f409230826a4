"""The `rollback` flow: the seed's procedure, step by step, each step a Prefect task.

1. resolve the stable SHA (given, or the last known good)   -> tasks/resolve_sha.py
2. verify its image exists in the registry, keep its digest  -> tasks/verify_image.py
3. redeploy it through the environment's deploy target       -> tasks/deploy.py
4. check health (probes, error rate, key features)           -> tasks/health_check.py
5. tell the team in Slack, in one thread                     -> tasks/notify.py (flows/_slack.py)
6. write the post-mortem artifacts, whatever happened        -> tasks/postmortem.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed
from prefect.utilities.urls import url_for

from flows._hold import deploy_starting, hold_alert, hold_period, previous_rollback
from flows._member import current_member, recovered_now
from flows._slack import Announcer, Board
from flows.trigger import completed_earlier, current_alert, current_trigger
from runbook import background, messages
from runbook.approval import wait_for_approval
from runbook.clients import Clients, Scope
from runbook.config import load_config
from runbook.errors import DeployError, InvalidShaError, RollbackInProgressError, RunbookError, ShaError
from runbook.events import emit
from runbook.journal import Journal, describe_error, utcnow
from runbook.repository import UnfinishedRollout
from runbook.retry_log import collect_retries
from runbook.rollback_slot import one_rollback_at_a_time
from runbook.shas import normalize_sha
from runbook.targets import DeployRequest, DeployResult
from tasks.deploy import deploy, finish_deploy, preflight_deploy
from tasks.github_deployments import close_rollout, find_unfinished_rollout, mark_rolled_back, open_rollout
from tasks.health_check import check_health, check_metric, check_smoke
from tasks.postmortem import write_postmortem
from tasks.progress import StepProgress
from tasks.ready_target import ReadyCheck, check_ready_target, prepare_ready_target
from tasks.resolve_sha import Resolution, resolve_sha
from tasks.verify_image import ImageCheck, verify_image


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
    ready_max_age: float | None = None  # None: no ready target used or prepared
    slot_recorded: Callable[[], None] = lambda: None  # waits until the slot's holder is written down


@flow(name="rollback", flow_run_name="rollback-{service}-{environment}", timeout_seconds=4 * 3600)
def rollback(
    service: str,
    environment: str,
    sha: str | None = None,
    reason: str = "",
    incident: str | None = None,
    dry_run: bool = False,
    require_approval: bool = False,
    approval_timeout_seconds: int = 900,
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

    The form shows a person's fields only. The configuration is the file `runbook serve` or the worker runs with
    ($RUNBOOK_CONFIG), never a parameter; an alert reaches the run in its context (runbook/incident.py), not as
    a parameter; who started the run is what the runbook knows (flows/trigger.py); every rollback that changes
    something is announced in Slack.
    """
    config = load_config()
    scope = Scope.of(config, service, environment)  # unknown service or environment: fail before anything
    if done := completed_earlier():  # a Retry of a run that already Completed: post, deploy and mark nothing
        return nothing_left_to_do(done)
    alert = current_alert()  # a malformed alert context: fail before anything
    now = utcnow()
    journal = Journal(
        service=service,
        environment=environment,
        trigger=current_trigger(alert),
        reason=reason,
        incident=incident,
        detected_at=alert.starts_at if alert else now,
        started_at=now,
        dry_run=dry_run,
        run_url=run_page_url(),
        alert=alert,
        attempt=flow_run.run_count or 1,
    )
    board = _incident_board(journal)  # one service of an incident: its thread is the incident's
    try:  # the format needs no I/O: a malformed SHA is refused before the slot, Slack or GitHub
        sha = normalize_sha(sha) if sha and sha.strip() else None
    except InvalidShaError as exc:
        _refused(journal, exc)
        raise
    # Drills report in the rehearsal's artifact; every other rollback that changes something is announced.
    posts = not dry_run and journal.trigger != "drill"
    ready = config.ready_target.max_age_seconds if config.ready_target.enabled else None
    options = _Options(sha, dry_run, approval_timeout_seconds if require_approval else None, posts, ready)
    period = hold_period(config)
    with Clients(config, scope) as clients, ExitStack() as stack:
        lookups = _Lookups.start(scope, clients, options)  # reads only, made while the slot and the hold are taken
        if not dry_run:
            try:
                slot = stack.enter_context(one_rollback_at_a_time(service, environment, flow_run.id))
            except RollbackInProgressError as exc:
                get_run_logger().warning(str(exc))
                return Cancelled(message=str(exc))
            if slot.released:
                journal.note(f"released the rollback slot of {slot.released}, which can no longer hold it")
            options = replace(options, slot_recorded=slot.recorded)
        # One incident, one automatic rollback: a held alert stops here.
        held = hold_alert(period, scope.slack.language, journal, clients.slack if posts else None)
        if held is not None:
            return held
        ctx = messages.IncidentContext(
            service=service,
            environment=environment,
            reason=reason,
            incident=incident,
            mentions=tuple(scope.service.slack.mentions),
            run_url=journal.run_url,
            language=scope.slack.language,
            alert=journal.alert_line(),
            previous=previous_rollback(period, scope.slack.language, journal),
        )
        slack = Announcer(clients.slack, journal, ctx, enabled=posts, board=board)
        return _run(_Rollback(scope, clients, journal, slack, options, lookups))


def nothing_left_to_do(done: str, what: str = "rollback") -> State:
    """What a Retry of a completed rollback (or incident) says, and all it does."""
    message = (
        f"nothing left to do: this {what} completed at {done}; it changes nothing now and posts nothing "
        f"(its post-mortem and Slack thread are those of that attempt). To roll back again, start a new run."
    )
    get_run_logger().info(message)
    return Completed(message=message)


def _run(run: _Rollback) -> RollbackSummary:
    """Run the procedure; whatever happens, tell Slack how it ended and write the post-mortem."""
    journal, options = run.journal, run.options
    service, environment = journal.service, journal.environment
    if journal.run_url:
        journal.links["flow run"] = journal.run_url
    if not options.dry_run:
        emit("rollback", "started", service, environment, {"trigger": journal.trigger, "reason": journal.reason})
    try:
        with collect_retries(journal):
            if options.sha is None:
                run.slack.incident()  # at once: the team hears of it while the version is chosen
            _procedure(run)
    except Exception as exc:
        step = next((s.name for s in reversed(journal.steps) if s.state == "failed"), "rollback")
        journal.fail(step, describe_error(exc))
        # A given SHA refused (unknown, off the branch, running now) was checked before any post: none now either.
        if run.slack.announced or not isinstance(exc, ShaError):
            run.slack.failed(step, journal.failure_reason or "")
        if not options.dry_run:
            emit("rollback", "failed", service, environment, {"step": step, "reason": journal.failure_reason})
        raise
    finally:
        run.slack.close()  # what Slack has not taken yet, at most slack.delivery_seconds more (time to recovery is set)
        run.progress.close()  # the long steps' last progress writes, a bounded moment
        journal.ended_at = utcnow()
        markdown = write_postmortem(journal)
    if not options.dry_run:
        emit(
            "rollback",
            "succeeded",
            service,
            environment,
            {"sha": journal.to_sha, "digest": journal.digest, "time_to_recovery": journal.time_to_recovery},
        )
    return RollbackSummary(
        journal.outcome,
        service,
        environment,
        journal.from_sha,
        journal.to_sha,
        journal.digest,
        journal.time_to_recovery,
        {s.name: s.seconds for s in journal.steps},
        markdown,
    )


def _procedure(run: _Rollback) -> None:
    """The seed's sections 3.1 to 3.3 and 4, in order."""
    unfinished = run.find_unfinished()  # a rollback that never finished is followed, never started again
    ready = run.ready_target(unfinished)  # the way back prepared ahead (runbook/ready.py), if it still holds
    resolution = run.identify(unfinished, ready)  # 3.1: the stable version, and the one running now
    run.slack.incident()  # a given SHA once checked (already posted for the others): a refused one posts nothing
    image = run.verify_image(resolution, unfinished, ready)  # prerequisite: its image, by digest
    if run.options.dry_run:
        run.preflight()
        return
    run.approve(resolution)  # when asked for: a person says yes in the Prefect UI
    request = run.request(resolution, image, unfinished)
    run.announce(request, resolution, unfinished)  # 4: "rollback started"; the intent recorded in GitHub
    with run.rollout_outcome():
        result = run.redeploy(request, resolution, unfinished)  # 3.2
        run.check()  # 3.3: health, error rate, key features
    run.recovered(request, resolution, image, result, unfinished)  # 4: "recovered", the bad version marked
    run.prepare_next()  # the next way back, ready for the next incident


@dataclass(frozen=True)
class _Lookups:
    """The procedure's first reads, started together as soon as the clients exist (they change nothing).

    `unfinished`: a rollout left in progress (not in a dry run); `ready`: the ready target's check (no SHA given,
    ready targets on). None where the procedure does not read it.
    """

    unfinished: PrefectFuture[UnfinishedRollout | None] | None
    ready: PrefectFuture[ReadyCheck] | None

    @classmethod
    def start(cls, scope: Scope, clients: Clients, options: _Options) -> _Lookups:
        repo, target = clients.repo, clients.target  # built here, once, not by two threads at a time
        unfinished = None if options.dry_run else find_unfinished_rollout.submit(repo, scope.environment)
        max_age = options.ready_max_age
        ready = None if max_age is None or options.sha else check_ready_target.submit(scope, repo, target, max_age)
        return cls(unfinished, ready)


class _Rollback:
    """One rollback run: each seed section as a method that runs its task and writes down what it found.

    The journal (for the post-mortem) and the rollout's GitHub Deployments record are filled here, from the
    tasks' results, so that `_procedure` reads like the runbook.
    """

    def __init__(
        self, scope: Scope, clients: Clients, journal: Journal, slack: Announcer, options: _Options, lookups: _Lookups
    ) -> None:
        self.scope = scope
        self.lookups = lookups
        self.clients = clients
        self.journal = journal
        self.slack = slack
        self.options = options
        self._rollout: int | None = None  # the GitHub deployment that records this rollout
        self.progress = StepProgress()  # the long steps' progress: Prefect artifacts, the Slack root's status

    def find_unfinished(self) -> UnfinishedRollout | None:
        """The unfinished rollout to follow, if any: not in a dry run, not when a person asked for another SHA."""
        if self.lookups.unfinished is None:
            return None
        journal = self.journal
        found = self.lookups.unfinished.result(raise_on_failure=False)
        if isinstance(found, RunbookError):
            journal.warn(f"could not check for an unfinished rollback: {describe_error(found)}")
            return None
        if isinstance(found, BaseException):
            raise found
        if found is not None:  # read before the slot was taken: its run may have finished since, read it again
            found = find_unfinished_rollout(self.clients.repo, self.scope.environment)
        if found is None:
            return None
        wanted = self.options.sha
        if wanted and not found.sha.startswith(wanted):
            journal.warn(
                f"rollback {found.rollback_id} to {found.sha[:7]} never finished; {wanted[:7]} was asked for explicitly"
            )
            return None
        journal.note(f"resuming rollback {found.rollback_id} to {found.sha[:7]} (recorded {found.created_at:%H:%M:%S})")
        return found

    def ready_target(self, unfinished: UnfinishedRollout | None) -> ReadyCheck | None:
        """The ready target's check when it applies (no SHA given, nothing to resume); None otherwise.

        Its `ready` is None when the target does not hold: the full resolution then starts from the running
        version this check read (not read twice).
        """
        checking = self.lookups.ready
        if checking is None or unfinished is not None:
            return None
        check = checking.result(raise_on_failure=False)
        if isinstance(check, BaseException):
            self.journal.note(f"path: full resolution (the ready target could not be checked: {check})")
            return None
        if check.ready is None:
            self.journal.note(f"path: full resolution ({check.why_not})")
            for warning in check.warnings:  # why a more trusted source of the running version was skipped
                self.journal.warn(warning)
            return check
        age = check.ready.age(utcnow())
        self.journal.note(f"path: ready target (prepared {age:.0f} s ago, the running version unchanged)")
        return check

    def identify(self, unfinished: UnfinishedRollout | None, ready: ReadyCheck | None = None) -> Resolution:
        """Seed 3.1: the commit to return to (given, the last known good, or the unfinished rollout's)."""
        journal = self.journal
        with journal.step("resolve-sha") as step:
            if unfinished is not None:
                resolution = Resolution(unfinished.sha, "", unfinished.from_sha, "unfinished rollback")
                step.detail = f"{resolution.short}: resuming rollback {unfinished.rollback_id}, never finished"
            elif ready is not None and ready.ready is not None:
                resolution = ready.resolution(self.scope)
                step.detail = (
                    f"{resolution.short} ({resolution.source}, ready target prepared at "
                    f"{ready.ready.prepared_at:%H:%M:%S}; {ready.running.source} says "
                    f"{(resolution.running or '')[:7]} runs, as then): {resolution.title}"
                )
            else:
                clients = self.clients
                current = ready.running if ready is not None else None
                resolution = resolve_sha(
                    self.scope, clients.repo, clients.target, clients.registry, self.options.sha, current
                )
                step.detail = f"{resolution.short} ({resolution.source}): {resolution.title}"
            journal.from_sha, journal.to_sha, journal.sha_source = resolution.running, resolution.sha, resolution.source
            journal.running_source = resolution.running_source
            if resolution.warning:
                journal.warn(resolution.warning)
            if resolution.compare_url:
                journal.links["changes rolled back"] = resolution.compare_url
        return resolution

    def verify_image(
        self, resolution: Resolution, unfinished: UnfinishedRollout | None, ready: ReadyCheck | None = None
    ) -> ImageCheck:
        """The image of that commit exists; from here on everything deploys it by digest."""
        with self.journal.step("verify-image") as step:
            if ready is not None and ready.ready is not None:
                image = ready.image()
                step.detail = f"{image.image} = {image.digest} (verified at {ready.ready.prepared_at:%H:%M:%S})"
            elif unfinished is not None:
                # What the unfinished rollout was deploying, by digest: exactly that, whatever the tag says now.
                name = unfinished.image.split("@", 1)[0]
                image = ImageCheck(f"{name}:{unfinished.sha}", unfinished.digest, "recorded by the unfinished rollout")
                step.detail = f"{image.image} (recorded by rollback {unfinished.rollback_id})"
            else:
                image = verify_image(self.clients.registry, self.scope.service, resolution.sha)
                step.detail = f"{image.image} = {image.digest}"
            self.journal.image, self.journal.digest = image.image, image.digest
        return image

    def prepare_next(self) -> None:
        """Recovered: the ready target for the next incident, from the version now running (a warning if not)."""
        if self.options.ready_max_age is None:
            return
        clients = self.clients
        state = prepare_ready_target(self.scope, clients.repo, clients.target, clients.registry, return_state=True)
        if state.is_failed():
            self.journal.warn(f"the next ready target could not be prepared: {state.message}")

    def preflight(self) -> None:
        """A dry run's last step: the deploy target is reachable and usable; nothing changes."""
        with self.journal.step("preflight-deploy") as step:
            step.detail = preflight_deploy(self.clients.target)
        self.journal.outcome = "dry-run"

    def approve(self, resolution: Resolution) -> None:
        """When approval is required: wait for a person's yes in the Prefect UI (ApprovalError otherwise)."""
        if self.options.approval_timeout is None:
            return
        journal = self.journal
        with journal.step("approval") as step:
            timeout = self.options.approval_timeout
            approval = wait_for_approval(journal, resolution.title, resolution.compare_url, timeout)
            journal.approval = f"{approval.approver or 'someone'}: {approval.comment or 'no comment'}"
            step.detail = f"approved by {journal.approval}"

    def request(self, resolution: Resolution, image: ImageCheck, unfinished: UnfinishedRollout | None) -> DeployRequest:
        """What the deploy target is asked for: this commit's image by digest, under this rollback's id."""
        return DeployRequest(
            self.scope.service_name,
            self.scope.environment,
            resolution.sha,
            image.pinned,
            image.digest,
            self.journal.reason,
            rollback_id=unfinished.rollback_id if unfinished else str(flow_run.id),
            resume_since=unfinished.created_at if unfinished else None,
        )

    def announce(self, request: DeployRequest, resolution: Resolution, unfinished: UnfinishedRollout | None) -> None:
        """Seed 4 "rollback started", while the intent is recorded in GitHub BEFORE the deploy call.

        Whatever happens to this process afterwards, the next attempt finds the deploy it may have started.
        """
        repo, journal = self.clients.repo, self.journal
        opening = None if unfinished else open_rollout.submit(repo, request, journal.run_url, resolution.running)
        self.slack.rollback_started(resolution.sha, resolution.compare_url)
        self.options.slot_recorded()  # a Retry after a crash during the deploy must be able to take the slot back
        self._rollout = unfinished.deployment_id if unfinished else _rollout_id(opening, journal)

    @contextmanager
    def rollout_outcome(self) -> Iterator[None]:
        """Around the deploy and the checks: the hold's record alongside; on failure, the rollout's GitHub status.

        The hold's record (alert runs) is written alongside the deploy: a run that dies before it lands leaves an
        unfinished rollout, which the next run follows anyway (never a second rollback further back).
        """
        journal = self.journal
        writing = background.start("hold-record", deploy_starting, journal, self.slack.thread)
        try:
            yield
        except Exception as exc:
            writing.join(timeout=30)
            if self._rollout is not None:
                # `error`: this deploy surely did nothing (it never went live); `failure`: it may have.
                nothing = isinstance(exc, DeployError) and exc.changed is False
                step = journal.steps[-1].name if journal.steps else "deploy"
                close_rollout(
                    self.clients.repo,
                    self._rollout,
                    "error" if nothing else "failure",
                    f"rollback failed: {step}" + (" (not deployed)" if nothing else ""),
                    journal.run_url,
                )
            raise
        writing.join(timeout=30)

    def redeploy(
        self, request: DeployRequest, resolution: Resolution, unfinished: UnfinishedRollout | None
    ) -> DeployResult:
        """Seed 3.2: the image by digest replaces the unstable one, through the environment's deploy target."""
        journal = self.journal
        # Resolving asked the target first which version runs: not asked twice. A resumed rollout, or a Retry
        # (whose resolution may come from the first attempt's cache, before a deploy that died), asks it now.
        said = resolution.running if resolution.running_from_target else None
        asked = unfinished is None and journal.attempt == 1
        with journal.step("deploy") as step, self.progress.shown("deploy", self.slack.progress):
            result = deploy(self.clients.target, request, said, asked=asked)
            step.detail = result.detail
            step.state = "skipped" if result.skipped else "completed"
            if result.link:
                journal.links["deploy"] = result.link
            if not result.confirmed:
                journal.warn(f"deploy not confirmed by {result.target}: {result.detail}")
        return result

    def check(self) -> None:
        """Seed 3.3: health endpoints, then the error rate, then the key features."""
        journal, settings = self.journal, self.scope.settings
        with journal.step("health-check") as step, self.progress.shown("health-check", self.slack.progress):
            report = check_health(settings.health)
            journal.healthy_at = utcnow()
            journal.health_summary = report.summary()
            step.detail = report.verdict.reason
        if settings.metric is not None:
            with journal.step("metric-check") as step, self.progress.shown("metric-check", self.slack.progress):
                journal.metric_summary = check_metric(settings.metric)
                step.detail = journal.metric_summary[0] if journal.metric_summary else ""
        if settings.smoke:
            with journal.step("smoke-checks") as step:
                journal.smoke_summary = check_smoke(settings.smoke)
                step.detail = journal.smoke_summary[0] if journal.smoke_summary else ""

    def recovered(
        self,
        request: DeployRequest,
        resolution: Resolution,
        image: ImageCheck,
        result: DeployResult,
        unfinished: UnfinishedRollout | None,
    ) -> None:
        """Healthy: record the rollout's success and the bad version, let the target clean up, tell everyone."""
        journal, repo = self.journal, self.clients.repo
        journal.outcome = "recovered"
        if self._rollout is not None:
            close_rollout(repo, self._rollout, "success", f"rollback to {resolution.short}: healthy", journal.run_url)
        rolled_back_from = resolution.running if resolution.running != resolution.sha else None
        # A resumed rollout was deployed by the run that died: its version was rolled back from all the same.
        if rolled_back_from and (not result.skipped or unfinished) and journal.trigger != "drill":
            # The version rolled back from must never be chosen as a last known good (drills roll back healthy ones).
            mark_rolled_back(
                repo,
                request.environment,
                rolled_back_from,
                journal.reason,
                resolution.running_deployment_id,
                journal.run_url,
            )
        if not result.skipped:
            cleanup = finish_deploy(self.clients.target, result)
            if cleanup and cleanup.startswith("clean-up failed"):
                journal.warn(cleanup)
        ttr = journal.time_to_recovery or 0.0
        get_run_logger().info(
            "recovered: %s/%s runs %s, time to recovery %.1f s",
            request.service,
            request.environment,
            resolution.short,
            ttr,
        )
        self.slack.recovered(resolution.sha, image.digest, ttr, result.link)
        recovered_now()  # one service of an incident: those that go back after it may start


def _rollout_id(opening: PrefectFuture[int | None] | None, journal: Journal) -> int | None:
    """The GitHub deployment id the record was opened with, or None (never fails the rollback)."""
    if opening is None:
        return None
    outcome = opening.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        journal.warn(f"GitHub deployment record: {describe_error(outcome)}")
        return None
    return outcome


def _incident_board(journal: Journal) -> Board | None:
    """When this run is one service of an incident: its journal goes to the incident's record; its thread."""
    member = current_member()
    if member is None:
        return None
    member.journal = journal
    return member.board


def _refused(journal: Journal, exc: RunbookError) -> None:
    """A run refused on its parameters before it began: the post-mortem says why; nothing was posted or changed."""
    journal.fail("resolve-sha", describe_error(exc))
    journal.ended_at = utcnow()
    write_postmortem(journal)


def run_page_url() -> str | None:
    """The run's page in the Prefect UI; None when PREFECT_UI_URL is not set."""
    return url_for("flow-run", obj_id=flow_run.id) if flow_run.id else None
