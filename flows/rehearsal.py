"""The `rehearsal` flow: prove, on a schedule, that a rollback would work today.

`preflight` (safe in production, changes nothing): resolve the last known good, verify its image, check
the deploy target can be reached with the permissions it needs, that the health probes answer and
that Slack accepts the token. `drill` (staging environments only): really roll back to the last known
good and forward again to the version that was running, measuring both. A report artifact either way;
Slack is told only when something is wrong (or always, or never).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.rollback import RollbackSummary, rollback
from flows.trigger import drill
from runbook import messages
from runbook.clients import Clients, Scope
from runbook.config import HealthSettings, load_config
from runbook.errors import RunbookError
from runbook.events import emit
from runbook.journal import describe_error, utcnow
from runbook.postmortem import artifact_key
from runbook.probes import run_health_check
from tasks.deploy import preflight_deploy
from tasks.notify import check_slack, notify_channel
from tasks.policy import NO_CACHE
from tasks.resolve_sha import Resolution, resolve_sha
from tasks.verify_image import verify_image

T = TypeVar("T")


@dataclass
class RehearsalReport:
    """Ready or not, and why, with what was checked and measured."""

    service: str
    environment: str
    mode: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    def markdown(self) -> str:
        verdict = "READY" if self.ready else "NOT READY"
        lines = [
            f"# Rollback rehearsal ({self.mode}) of `{self.service}` in `{self.environment}`: {verdict}",
            "",
            f"Run at {utcnow():%Y-%m-%d %H:%M:%S} UTC.",
            "",
            "| check | result | detail |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {'ok' if ok else 'FAILED'} | {detail.replace('|', '/')} |" for name, ok, detail in self.checks
        ]
        if self.timings:
            lines += ["", "| measured | seconds |", "|---|---|"]
            lines += [f"| {name} | {seconds:.2f} |" for name, seconds in self.timings.items()]
        return "\n".join(lines) + "\n"

    def summary(self, language: messages.Language = "en") -> str:
        failed = [(name, detail) for name, ok, detail in self.checks if not ok]
        return messages.rehearsal_summary(language, self.mode, self.service, self.environment, self.ready, failed)


@task(name="probe-health-once", cache_policy=NO_CACHE)
def probe_health_once(settings: HealthSettings) -> str:
    """One round of the health probes (they must answer healthy now); HealthCheckError if not."""
    once = settings.model_copy(
        update={"consecutive_successes": 1, "deadline_seconds": settings.probe_timeout_seconds * 2}
    )
    return run_health_check(once).verdict.reason


def _checked(report: RehearsalReport, name: str, call: Callable[[], T], describe: Callable[[T], str] = str) -> T | None:
    """Run one check; its failure is a line of the report, not a failed rehearsal run.

    `describe` turns the result into the report's sentence (a dataclass's repr is no sentence for on-call).
    """
    try:
        result = call()
    except Exception as exc:
        report.check(name, False, describe_error(exc))
        return None
    report.check(name, True, describe(result))
    return result


def describe_resolution(resolution: Resolution) -> str:
    """The way back in one sentence: `3f2a1bc Fix cart (last known good; running 9c0ffee from docker container
    label)`, and the resolution's warning when it has one."""
    if resolution.running:
        running = f"running {resolution.running[:7]} from {resolution.running_source}"
    else:
        running = "the running version is unknown"
    sentence = f"{resolution.short} {resolution.title} ({resolution.source}; {running})"
    return f"{sentence}; {resolution.warning}" if resolution.warning else sentence


@flow(name="rehearsal", flow_run_name="rehearsal-{mode}-{service}-{environment}", timeout_seconds=3 * 3600)
def rehearsal(
    service: str,
    environment: str,
    mode: Literal["preflight", "drill"] = "preflight",
    notify: Literal["on-problem", "always", "never"] = "on-problem",
) -> RehearsalReport:
    """Rehearse the rollback of a service: `preflight` checks everything without changing anything; `drill` rolls
    a staging environment back to the last known good and forward again.

    Args:
        service: The configured service.
        environment: The environment to rehearse.
        mode: preflight (safe in production) or drill (staging only: really rolls back and forward).
        notify: When to post the report in Slack: on-problem, always, never.

    The configuration is the file `runbook serve` or the worker runs with ($RUNBOOK_CONFIG), never a parameter.
    """
    config = load_config()
    scope = Scope.of(config, service, environment)  # unknown service or environment: fail before anything
    report = RehearsalReport(service, environment, mode)
    with Clients(config, scope) as clients:
        if mode == "preflight":
            _preflight(scope, clients, report)
        else:
            with drill():  # the rollbacks it runs, in this process, post nothing (this report speaks for them)
                _drill(scope, report)
        create_markdown_artifact(
            markdown=report.markdown(),
            key=artifact_key(service, environment).replace("rollback-", "rehearsal-", 1),
            description=f"Rehearsal ({mode}): {'ready' if report.ready else 'not ready'}",
        )
        get_run_logger().info(report.summary())
        failed = [name for name, ok, _ in report.checks if not ok]
        emit(
            "rehearsal",
            "ready" if report.ready else "not-ready",
            service,
            environment,
            {"mode": mode, "failed_checks": failed, "timings": report.timings},
        )
        if notify == "always" or (notify == "on-problem" and not report.ready):
            notify_channel(clients.slack, report.summary(scope.slack.language))
    return report


def _preflight(scope: Scope, clients: Clients, report: RehearsalReport) -> None:
    resolution = _checked(
        report,
        "last known good",
        lambda: resolve_sha(scope, clients.repo, clients.target, clients.registry, None),
        describe_resolution,
    )
    if resolution is not None:
        _checked(
            report,
            "image",
            lambda: verify_image(clients.registry, scope.service, resolution.sha),
            lambda image: f"{image.image} is in the registry ({image.digest})",
        )
    _checked(report, "deploy target", lambda: preflight_deploy(clients.target))
    _checked(report, "health probes", lambda: probe_health_once(scope.settings.health))
    problem = check_slack(clients.slack)
    report.check("slack", problem is None, problem or "the token is accepted")


def _drill(scope: Scope, report: RehearsalReport) -> None:
    service, environment = report.service, report.environment
    if not scope.settings.staging:
        report.check("staging", False, f"{environment} is not marked `staging: true`: a drill really rolls back")
        return
    back = _checked(
        report,
        "roll back",
        lambda: _summary(
            rollback(
                service=service,
                environment=environment,
                reason="rehearsal drill",
            )
        ),
        describe_rollback,
    )
    if not isinstance(back, RollbackSummary):
        return
    report.timings["roll back (to healthy)"] = back.time_to_recovery or 0.0
    forward = _checked(
        report,
        "roll forward",
        lambda: _summary(
            rollback(
                service=service,
                environment=environment,
                sha=back.from_sha,
                reason="rehearsal drill: forward again",
            )
        ),
        describe_rollback,
    )
    if isinstance(forward, RollbackSummary):
        report.timings["roll forward (to healthy)"] = forward.time_to_recovery or 0.0


def describe_rollback(summary: RollbackSummary) -> str:
    """A drill's rollback in one sentence: `9c0ffee -> 3f2a1bc: recovered, healthy after 42.0 s`."""
    shas = f"{(summary.from_sha or 'unknown')[:7]} -> {(summary.to_sha or 'unknown')[:7]}"
    healthy = f", healthy after {summary.time_to_recovery:.1f} s" if summary.time_to_recovery is not None else ""
    return f"{shas}: {summary.outcome}{healthy}"


def _summary(result: object) -> RollbackSummary:
    if not isinstance(result, RollbackSummary):  # a Cancelled state: another rollback held the slot
        raise RunbookError(f"the rollback did not run: {getattr(result, 'message', result)}")
    return result
