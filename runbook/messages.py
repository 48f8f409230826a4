"""What Slack is told, in one place: the seed's three messages (French, as written) and English.

Pure functions over plain values. No secret, token or internal error dump goes in here: failure
messages carry the step, a one-line reason written by this project, and the action for a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Language = Literal["fr", "en"]

_TEXTS: dict[str, dict[Language, str]] = {
    # The first three are the seed's "Messages clés", word for word.
    "incident": {
        "fr": "Incident en production détecté. Investigation en cours.",
        "en": "Production incident detected. Investigation in progress.",
    },
    "rollback_started": {
        "fr": "Déclenchement de la procédure de rollback vers la version `{sha}`.",
        "en": "Starting the rollback procedure to version `{sha}`.",
    },
    "recovered": {
        "fr": "Rollback terminé. Le système est de nouveau opérationnel. Une analyse post-mortem sera effectuée.",
        "en": "Rollback finished. The system is operational again. A post-mortem analysis will follow.",
    },
    "failed": {
        "fr": ":rotating_light: Échec du rollback à l'étape *{step}* : {reason}\nAction requise : {action}",
        "en": ":rotating_light: Rollback failed at step *{step}*: {reason}\nAction needed: {action}",
    },
    "context": {
        "fr": "Service `{service}` · environnement `{environment}`",
        "en": "Service `{service}` · environment `{environment}`",
    },
    "reason": {"fr": "Raison : {reason}", "en": "Reason: {reason}"},
    "incident_ref": {"fr": "Incident : {incident}", "en": "Incident: {incident}"},
    "recovery_time": {
        "fr": "Temps de rétablissement : {seconds} s (version `{short}`, image `{digest}`)",
        "en": "Time to recovery: {seconds} s (version `{short}`, image `{digest}`)",
    },
    "run_link": {"fr": "Suivi : {url}", "en": "Run: {url}"},
    "status_investigating": {"fr": "*Statut :* investigation en cours", "en": "*Status:* investigating"},
    "status_rolling_back": {
        "fr": "*Statut :* rollback vers `{short}` en cours",
        "en": "*Status:* rolling back to `{short}`",
    },
    "status_recovered": {
        "fr": ":white_check_mark: *Statut :* rétabli en {seconds} s (version `{short}`)",
        "en": ":white_check_mark: *Status:* recovered in {seconds} s (version `{short}`)",
    },
    "status_failed": {
        "fr": ":x: *Statut :* échec à l'étape {step}",
        "en": ":x: *Status:* failed at step {step}",
    },
    "alert_ref": {"fr": "Alerte : {alert}", "en": "Alert: {alert}"},
    "compare_link": {"fr": "Changements annulés : {url}", "en": "Changes rolled back: {url}"},
    "deploy_link": {"fr": "Déploiement : {url}", "en": "Deployment: {url}"},
    # After an automatic rollback: the same incident's later alerts do not roll back further.
    "held": {
        "fr": ":warning: Toujours en alerte après le rollback vers `{short}` : une personne décide. "
        "Pas d'autre rollback automatique pour cet incident.",
        "en": ":warning: Still alerting after the rollback to `{short}`: a person decides. "
        "No further automatic rollback for this incident.",
    },
    "rollback_by_hand": {
        "fr": "Rollback à la main depuis l'interface Prefect : {url} (cocher require_approval : "
        "le run attend une approbation avant de déployer)",
        "en": "Roll back by hand from the Prefect UI: {url} (tick require_approval: "
        "the run waits for an approval before deploying)",
    },
    "previous_rollback": {
        "fr": ":information_source: Un rollback automatique vient d'avoir lieu : vers `{short}` à {at}",
        "en": ":information_source: An automatic rollback just happened: to `{short}` at {at}",
    },
}

# What a person must do after a failure at each step; the generic line covers the rest.
_ACTIONS: dict[str, dict[Language, str]] = {
    "resolve-sha": {
        "fr": "choisir à la main le SHA stable dans l'historique de la branche et relancer le rollback avec ce SHA.",
        "en": "pick the stable SHA by hand from the branch history and run the rollback again with it.",
    },
    "verify-image": {
        "fr": "vérifier que l'image de ce commit a été poussée au registre (ou choisir un autre SHA), puis relancer.",
        "en": "check that this commit's image was pushed to the registry (or pick another SHA), then run again.",
    },
    "deploy": {
        "fr": "ouvrir le workflow de rollback indiqué, corriger la cause et relancer ; "
        "la production tourne peut-être encore sur la version instable.",
        "en": "open the rollback workflow linked here, fix the cause and run again; "
        "production may still run the unstable version.",
    },
    "health-check": {
        "fr": "la version a été redéployée mais le service n'est pas sain : escalader à l'astreinte, "
        "vérifier les tableaux de bord et les logs.",
        "en": "the version was redeployed but the service is not healthy: escalate to on-call, "
        "check the dashboards and logs.",
    },
    "metric-check": {
        "fr": "la version est redéployée mais le taux d'erreur reste élevé : escalader à l'astreinte, "
        "vérifier les tableaux de bord ; la cause n'est peut-être pas le dernier déploiement.",
        "en": "the version is redeployed but the error rate stays high: escalate to on-call, check the "
        "dashboards; the cause may not be the last deploy.",
    },
    "smoke-checks": {
        "fr": "le service répond mais des fonctionnalités clés échouent : vérifier à la main et escalader.",
        "en": "the service answers but key features fail: check by hand and escalate.",
    },
    "approval": {
        "fr": "rien n'a été déployé : relancer le rollback, ou choisir un autre SHA.",
        "en": "nothing was deployed: run the rollback again, or choose another SHA.",
    },
}
_GENERIC_ACTION: dict[Language, str] = {
    "fr": "consulter le run Prefect pour le détail et suivre la procédure manuelle.",
    "en": "open the Prefect run for details and follow the manual procedure.",
}


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
    return _TEXTS[key][language].format(**values)


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
    action = _ACTIONS.get(step, _GENERIC_ACTION)[lang]
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
