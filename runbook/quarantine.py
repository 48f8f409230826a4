"""The quarantine of a version rolled back from: what marks it, what lifts it, how a person lifts it. Pure.

After a rollback, the version rolled back from gets a GitHub deployment status `failure` whose description
starts with `ROLLED_BACK` (tasks/github_deployments.py). From then on it is *quarantined* in that environment:
the application's deploy workflow calls `deployments/github/quarantine-guard.yml`, which refuses to deploy it,
until a person lifts the quarantine with `runbook release` (flows/release.py), which adds a status `inactive`
whose description starts with `RELEASED` to each quarantined deployment of it.

One rule, here and in the guard's script (which repeats it, standalone, for the GitHub runner): a deployment is
quarantined when, among its statuses newest first, `inactive` ones aside unless written by the release (GitHub
adds `inactive` on its own when another deployment succeeds), the first is the rollback's `failure`. A version
is quarantined in an environment when any of its deployments there is.

`inactive` is what the release writes because it says "not live, not bad": `repository.was_healthy` looks past
it, to the `failure` below, so a released version is no last known good until it is deployed and healthy again.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

#: The description the runbook gives the `failure` status of the version it rolled back from (its prefix).
ROLLED_BACK = "rolled back by rollback-runbook"
#: The description the release gives the status that lifts the quarantine (its prefix), and that status's state.
RELEASED = "quarantine lifted by rollback-runbook"
RELEASE_STATE = "inactive"


@dataclass(frozen=True)
class StatusRecord:
    """One GitHub deployment status, as the quarantine reads it."""

    state: str
    description: str
    log_url: str = ""


def is_quarantine(status: StatusRecord) -> bool:
    """Whether this status is the rollback's mark on the version it rolled back from."""
    return status.state == "failure" and status.description.startswith(ROLLED_BACK)


def is_release(status: StatusRecord) -> bool:
    """Whether this status is a person's release of a quarantined version."""
    return status.state == RELEASE_STATE and status.description.startswith(RELEASED)


def quarantining(statuses: Sequence[StatusRecord]) -> StatusRecord | None:
    """The status that quarantines a deployment (its statuses newest first), or None when it is not quarantined."""
    for status in statuses:
        if status.state == "inactive" and not is_release(status):
            continue  # GitHub's own `inactive` (another deployment succeeded): it lifts nothing
        return status if is_quarantine(status) else None
    return None


def release_description(reason: str) -> str:
    """The description of the release's status (GitHub keeps 140 characters)."""
    return f"{RELEASED}: {' '.join(reason.split())}"[:140]


def lift_command(sha: str, service: str, environment: str) -> str:
    """The command a person runs to lift the quarantine (the guard prints the same)."""
    quoted = " ".join(shlex.quote(part) for part in (sha, "--service", service, "--environment", environment))
    return f'runbook release {quoted} --reason "<why it is safe again>"'
