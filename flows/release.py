"""The `release` flow: a person lifts the quarantine of a version rolled back from (runbook/quarantine.py).

1. the SHA's format (no I/O), then the service and the environment (the configuration): refused before anything
2. the commit, expanded through GitHub
3. its deployments in that environment: refused unless one of them is quarantined (nothing changed)
4. each quarantined deployment gets a status `inactive`, "quarantine lifted by rollback-runbook: <reason>", its
   log URL this run: the guard (`deployments/github/quarantine-guard.yml`) lets the version be deployed again.
   It is no last known good for it (`repository.was_healthy` looks past `inactive`): only a new deployment that
   is healthy makes it one again.
5. Slack is told: in the thread of the automatic rollback that quarantined it when the hold record of that
   service and environment (runbook/hold.py) names that rollback, else in the service's channel. Slack trouble
   is a warning: the release is recorded in GitHub either way.

A run, not a script: the Prefect UI shows who lifted what and when, with its logs. `runbook release` runs it here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from github.Repository import Repository
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.utilities.urls import url_for

from runbook import hold, messages, quarantine
from runbook import repository as repo_api
from runbook.clients import Clients, Scope
from runbook.config import load_config
from runbook.errors import ConfigError, InvalidShaError, RunbookError, ShaError
from runbook.events import emit
from runbook.journal import describe_error
from runbook.shas import normalize_sha
from runbook.slack import Deadline, Posted, SlackPoster

#: How long the announcement is tried again while Slack has passing trouble (at most `slack.delivery_seconds`).
SLACK_SECONDS = 15.0


@dataclass(frozen=True)
class ReleaseSummary:
    """What the run returns: the version released, the deployments that recorded it, where Slack was told."""

    service: str
    environment: str
    sha: str
    deployments: tuple[int, ...]
    announced: str


@flow(name="release", flow_run_name="release-{service}-{environment}", timeout_seconds=600)
def release(sha: str, service: str, environment: str, reason: str) -> ReleaseSummary:
    """Lift the quarantine of a version rolled back from, so that the application's deploy workflow may deploy it.

    Args:
        sha: The version rolled back from (7 to 40 hex characters), as the quarantine guard names it.
        service: The configured service.
        environment: The environment it was rolled back in (e.g. production).
        reason: Why it is safe again (recorded in GitHub Deployments and told in Slack).
    """
    try:  # the format needs no I/O: refused before the configuration, GitHub or Slack
        wanted = normalize_sha(sha)
    except InvalidShaError as exc:
        raise InvalidShaError(
            exc.message, hint="paste the SHA the quarantine guard named (7 to 40 hexadecimal characters)"
        ) from None
    if not reason.strip():
        raise ConfigError(
            "no reason given for lifting the quarantine",
            hint='say in a few words why this version is safe again (--reason "fixed by ...")',
        )
    config = load_config()
    scope = Scope.of(config, service, environment)  # unknown service or environment: refused before GitHub
    logger = get_run_logger()
    with Clients(config, scope) as clients:
        repo = clients.repo
        commit = repo_api.get_commit(repo, wanted)
        held = _quarantined(repo, scope, commit.sha)
        run_url = _run_url()
        description = quarantine.release_description(reason)
        for deployment_id in held:
            repo_api.set_deployment_status(
                repo, deployment_id, state=quarantine.RELEASE_STATE, description=description, log_url=run_url
            )
            logger.info("GitHub deployment %s of %s: quarantine lifted", deployment_id, commit.sha[:7])
        announced = _announce(clients.slack, repo, scope, commit.sha, reason, run_url)
    emit("release", "succeeded", service, environment, {"sha": commit.sha, "reason": reason})
    logger.info(
        "released %s in %s/%s: the quarantine guard lets it be deployed again; announced %s",
        commit.sha[:7],
        service,
        environment,
        announced,
    )
    return ReleaseSummary(service, environment, commit.sha, tuple(held), announced)


def _quarantined(repo: Repository, scope: Scope, sha: str) -> list[int]:
    """The ids of the quarantined deployments of `sha` in the environment; ShaError (nothing changed) when none."""
    found = repo_api.deployments_of(repo, sha, scope.environment)
    held = [d.id for d in found if quarantine.quarantining(d.statuses) is not None]
    if held:
        return held
    why = (
        "it has no deployment there"
        if not found
        else "none of its deployments there is marked rolled back by rollback-runbook (or its quarantine was lifted)"
    )
    raise ShaError(
        f"{sha[:7]} is not quarantined in {scope.service_name}/{scope.environment}: {why}; nothing was changed",
        hint="check the SHA, the service and the environment the quarantine guard named when it refused the deploy",
    )


def _announce(slack: SlackPoster, repo: Repository, scope: Scope, sha: str, reason: str, run_url: str | None) -> str:
    """Tell Slack; where it was told ("in the rollback's thread", "in <channel>"), or why not (a warning)."""
    logger = get_run_logger()
    rollback = _quarantining_rollback(repo, scope, sha)
    thread = _rollback_thread(scope, rollback)
    text = messages.quarantine_lifted_message(
        scope.slack.language,
        scope.service_name,
        scope.environment,
        sha,
        reason,
        run_url,
        None if thread.threaded or rollback is None else rollback.log_url or None,
    )
    until = Deadline()
    until.give_up_at(time.monotonic() + min(SLACK_SECONDS, scope.slack.delivery_seconds))
    if thread.threaded:
        posted = slack.post(text, thread, channel=thread.channel, until=until)
    else:
        posted = slack.post(text, until=until)
    if not posted.ok:
        logger.warning("%s; the release is recorded in GitHub all the same", posted.error)
        return f"nowhere: Slack did not take it ({posted.error})"
    return "in the rollback's thread" if thread.threaded else f"in {scope.channel}"


def _quarantining_rollback(repo: Repository, scope: Scope, sha: str) -> repo_api.RolloutRecord | None:
    """The rollout recorded by the rollback away from `sha`, or None (a warning when GitHub cannot say)."""
    try:
        return repo_api.rollout_from(repo, scope.environment, sha)
    except RunbookError as exc:
        get_run_logger().warning("could not find the rollback that quarantined %s: %s", sha[:7], exc)
        return None


def _rollback_thread(scope: Scope, rollback: repo_api.RolloutRecord | None) -> Posted:
    """The Slack thread of that rollback when the hold record names it (an automatic rollback), else no thread."""
    none = Posted(None, None)
    if rollback is None:
        return none
    try:
        with get_client(sync_client=True) as client:
            last = hold.read_last(client, scope.service_name, scope.environment)
    except Exception as exc:
        get_run_logger().warning(
            "could not read the last automatic rollback (%s): announcing in the channel", describe_error(exc)
        )
        return none
    if last is None or last.flow_run_id != rollback.rollback_id or not last.thread_ts:
        return none
    return Posted(last.channel, last.thread_ts)


def _run_url() -> str | None:
    """This run's page in the Prefect UI; None when PREFECT_UI_URL is not set."""
    return url_for("flow-run", obj_id=flow_run.id) if flow_run.id else None
