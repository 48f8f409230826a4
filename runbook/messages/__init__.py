"""What Slack is told, in one place: the seed's three messages (French, as written) and English.

Each language is one module of this package (`fr.py`, `en.py`) holding one mapping, `MESSAGES`, key -> template,
all with the same keys and the same `{fields}` (tests/test_messages.py checks it). Adding a language: its module
here, and its code in `Language`, which is the registration.

Pure functions over plain values. No secret, token or internal error dump goes in here: failure
messages carry the step, a one-line reason written by this project, and the action for a person.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, Literal, get_args

Language = Literal["fr", "en"]
"""The languages Slack can be written in, each the name of its module in this package."""


def _load(language: str) -> Mapping[str, str]:
    templates = importlib.import_module(f"{__name__}.{language}").MESSAGES
    if not isinstance(templates, Mapping):
        raise TypeError(f"{__name__}.{language}.MESSAGES is not a mapping of key -> template")
    return templates


CATALOGUES: Final[Mapping[Language, Mapping[str, str]]] = MappingProxyType(
    {language: _load(language) for language in get_args(Language)}
)
"""Every language's templates, key -> `str.format` template."""


@dataclass(frozen=True)
class IncidentContext:
    """What every message of one rollback may mention."""

    service: str
    environment: str
    reason: str = ""
    incident: str | None = None
    mentions: tuple[str, ...] = ()
    run_url: str | None = None
    language: Language = "fr"
    alert: str | None = None  # "name (link)" of the alert that started it
    previous: str | None = None  # an automatic rollback that just happened (`previous_rollback_line`)


def text(key: str, language: Language, **values: object) -> str:
    """One template, filled."""
    return CATALOGUES[language][key].format(**values)


def _lines(*lines: str | None) -> str:
    return "\n".join(line for line in lines if line)


def incident_message(ctx: IncidentContext, status: str | None = None) -> str:
    """Seed message 1, the thread's root: incident detected, who is called, why, and the current status."""
    lang = ctx.language
    return _lines(
        (" ".join(ctx.mentions) + " " if ctx.mentions else "") + text("incident", lang),
        text("context", lang, service=ctx.service, environment=ctx.environment),
        text("reason", lang, reason=ctx.reason) if ctx.reason else None,
        text("incident_ref", lang, incident=ctx.incident) if ctx.incident else None,
        text("alert_ref", lang, alert=ctx.alert) if ctx.alert else None,
        ctx.previous,
        text("run_link", lang, url=ctx.run_url) if ctx.run_url else None,
        status or text("status_investigating", lang),
    )


def status_rolling_back(ctx: IncidentContext, sha: str) -> str:
    """The root's status while the rollback runs."""
    return text("status_rolling_back", ctx.language, short=sha[:7])


def status_recovered(ctx: IncidentContext, sha: str, seconds: float) -> str:
    """The root's status once healthy."""
    return text("status_recovered", ctx.language, short=sha[:7], seconds=f"{seconds:.1f}")


def status_failed(ctx: IncidentContext, step: str) -> str:
    """The root's status after a failure."""
    return text("status_failed", ctx.language, step=step)


def rollback_started_message(ctx: IncidentContext, sha: str, compare_url: str | None = None) -> str:
    """Seed message 2: the rollback starts towards this SHA."""
    lang = ctx.language
    return _lines(
        text("rollback_started", lang, sha=sha),
        text("compare_link", lang, url=compare_url) if compare_url else None,
    )


def recovered_message(
    ctx: IncidentContext, sha: str, digest: str, seconds: float, deploy_url: str | None = None
) -> str:
    """Seed message 3: finished and healthy, with the time to recovery."""
    lang = ctx.language
    return _lines(
        text("recovered", lang),
        text("recovery_time", lang, seconds=f"{seconds:.1f}", short=sha[:7], digest=digest[:19]),
        text("deploy_link", lang, url=deploy_url) if deploy_url else None,
        text("run_link", lang, url=ctx.run_url) if ctx.run_url else None,
    )


def failure_message(ctx: IncidentContext, step: str, reason: str) -> str:
    """The escalation: which step failed, why, and what a person must do now."""
    lang = ctx.language
    templates = CATALOGUES[lang]
    action = templates.get(f"action.{step}", templates["action.generic"])
    return _lines(
        (" ".join(ctx.mentions) + " " if ctx.mentions else "")
        + text("failed", lang, step=step, reason=reason, action=action),
        text("run_link", lang, url=ctx.run_url) if ctx.run_url else None,
    )


def held_message(
    language: Language, sha: str, rollback_url: str | None, alert: str | None, start_url: str | None
) -> str:
    """The reply in an automatic rollback's thread when the same incident still alerts: a person decides."""
    return _lines(
        text("held", language, short=sha[:7]),
        text("alert_ref", language, alert=alert) if alert else None,
        text("rollback_by_hand", language, url=start_url) if start_url else None,
        text("run_link", language, url=rollback_url) if rollback_url else None,
    )


def previous_rollback_line(language: Language, sha: str, at: datetime, run_url: str | None) -> str:
    """One line for a manual run's root message: an automatic rollback just happened (to what, when, which run)."""
    line = text("previous_rollback", language, short=sha[:7], at=at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    return f"{line} ({run_url})" if run_url else line


def quarantine_lifted_message(
    language: Language,
    service: str,
    environment: str,
    sha: str,
    reason: str,
    run_url: str | None = None,
    rollback_url: str | None = None,
) -> str:
    """A person lifted the quarantine of a version rolled back from: it may be deployed again (why, which run)."""
    return _lines(
        text("quarantine_lifted", language, short=sha[:7], service=service, environment=environment),
        text("reason", language, reason=reason) if reason else None,
        text("quarantine_rollback_link", language, url=rollback_url) if rollback_url else None,
        text("run_link", language, url=run_url) if run_url else None,
    )


def rehearsal_summary(
    language: Language, mode: str, service: str, environment: str, ready: bool, failed: Iterable[tuple[str, str]]
) -> str:
    """The rehearsal's report for Slack: ready, or not ready and each failed check (name, detail)."""
    where = {"mode": mode, "service": service, "environment": environment}
    if ready:
        return text("rehearsal_ready", language, **where)
    lines = [text("rehearsal_failed_check", language, check=check, detail=detail) for check, detail in failed]
    return text("rehearsal_not_ready", language, **where) + "\n" + "\n".join(lines)


def status_investigating(ctx: IncidentContext) -> str:
    """A service's status before anything is known."""
    return text("status_investigating", ctx.language)


def member_message(ctx: IncidentContext, message: str) -> str:
    """A service's message in an incident's thread: the seed's text as it is, after the service's name."""
    return text("member_prefix", ctx.language, service=ctx.service, environment=ctx.environment) + " " + message


def board_message(ctx: IncidentContext, statuses: Mapping[str, str], status: str | None = None) -> str:
    """An incident's root: seed message 1, then every service with its status (`service/environment` -> status).

    `ctx.service`/`ctx.environment` name the incident's services as a whole; `status`, the incident's overall
    status once it is over.
    """
    lang = ctx.language
    return _lines(
        (" ".join(ctx.mentions) + " " if ctx.mentions else "") + text("incident", lang),
        text("incident_services", lang, count=len(statuses)),
        *(text("member_line", lang, name=key, status=line) for key, line in statuses.items()),
        text("reason", lang, reason=ctx.reason) if ctx.reason else None,
        text("incident_ref", lang, incident=ctx.incident) if ctx.incident else None,
        text("alert_ref", lang, alert=ctx.alert) if ctx.alert else None,
        text("run_link", lang, url=ctx.run_url) if ctx.run_url else None,
        status,
    )


def incident_recovered(language: Language, count: int, seconds: float) -> tuple[str, str]:
    """An incident's end when every service recovered: (the root's status, the broadcast reply)."""
    figures = {"count": count, "seconds": f"{seconds:.1f}"}
    return text("status_incident_recovered", language, **figures), text("incident_recovered", language, **figures)


def incident_failed(
    language: Language, count: int, failed: Mapping[str, str], mentions: Iterable[str] = ()
) -> tuple[str, str]:
    """An incident's end when some services did not recover (key -> why): (the root's status, the escalation)."""
    names = ", ".join(f"`{key}`" for key in failed)
    lines = "\n".join(text("incident_failed_line", language, name=key, why=why) for key, why in failed.items())
    status = text("status_incident_failed", language, failed=len(failed), count=count, names=names)
    called = " ".join(mentions)
    reply = text("incident_failed", language, failed=len(failed), count=count, lines=lines)
    return status, (f"{called} {reply}" if called else reply)


def status_waiting(language: Language, first: str) -> str:
    """A service's status in an incident's root while it waits for the services that go back before it."""
    return text("status_waiting", language, first=first)


def status_skipped(language: Language, first: str) -> str:
    """A service's status when one that had to go back before it did not recover: it is left as it is."""
    return text("status_skipped", language, first=first)


def status_not_run(language: Language, why: str) -> str:
    """A service's status when its rollback run ended without rolling back (held, one already in progress)."""
    return text("status_not_run", language, why=why)


def status_recovered_earlier(language: Language, run: str) -> str:
    """A service's status in a retried incident's root when an earlier attempt rolled it back (run `run`)."""
    return text("status_recovered_earlier", language, run=run)


# --- a long step's progress (runbook/progress.py): the loops' words, the root's status while the step lasts ------


def status_progress(ctx: IncidentContext, sha: str, detail: str) -> str:
    """The root's status during a long step: rolling back to SHA, and how far the step is."""
    return text("status_progress", ctx.language, short=sha[:7], detail=detail)


def elapsed(seconds: float) -> str:
    """A step's duration so far, as a person reads it: `45 s`, `2 min`, `2 min 5 s` (the same in every language)."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def progress_workflow_run(language: Language, run: int, status: str, seconds: float) -> str:
    """A workflow run followed (`status`: GitHub's, e.g. queued, in_progress)."""
    return text("progress_workflow_run", language, run=run, status=status, elapsed=elapsed(seconds))


def progress_workflow_run_ended(language: Language, run: int, conclusion: str, seconds: float) -> str:
    """A workflow run followed to its end (`conclusion`: GitHub's, e.g. success, failure)."""
    return text("progress_workflow_run_ended", language, run=run, conclusion=conclusion, elapsed=elapsed(seconds))


def progress_deploy_api(language: Language, status: str, seconds: float) -> str:
    """A deploy API's status followed (what it last said: its status, or `HTTP 503`, `no answer`)."""
    return text("progress_deploy_api", language, status=status, elapsed=elapsed(seconds))


def progress_container(language: Language, status: str, seconds: float) -> str:
    """A just-started container waited for (Docker's status, and its health when it has a HEALTHCHECK)."""
    return text("progress_container", language, status=status, elapsed=elapsed(seconds))


def progress_health(language: Language, passed: int, required: int, probe: str | None, answer: str) -> str:
    """The health rounds: how many passed in a row, or which probe failed the last one (`probe`) and how."""
    if probe is not None:
        return text("progress_health_failing", language, probe=probe, answer=answer, required=required)
    return text("progress_health", language, passed=passed, required=required)


def progress_metric(
    language: Language, value: float | None, threshold: float, held: float, hold: float, ratio: bool
) -> str:
    """The error rate's hold: the last value against the threshold, and how long it has held so far.

    `ratio`: the value is a share (the default 5xx-ratio query), shown as a percentage; else as it is.
    """
    hold_text = f"{hold:g}"
    if value is None:
        return text("progress_metric_no_value", language, held=f"{held:.0f}", hold=hold_text)
    shown, limit = (_percent(value), _percent(threshold)) if ratio else (f"{value:.4g}", f"{threshold:g}")
    if value >= threshold:
        return text("progress_metric_over", language, value=shown, threshold=limit, hold=hold_text)
    return text("progress_metric", language, value=shown, threshold=limit, held=f"{held:.0f}", hold=hold_text)


def _percent(share: float) -> str:
    percent = share * 100
    return f"{percent:.0f} %" if percent >= 10 else f"{percent:.2g} %"
