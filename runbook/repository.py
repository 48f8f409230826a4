"""The service's GitHub repository as the runbook needs it: history, deployments, commits (PyGithub)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from github import Auth, Github, GithubException, GithubRetry, UnknownObjectException
from github.GithubObject import NotSet
from github.Repository import Repository

from runbook.config import GitHubSettings
from runbook.errors import CommitNotFoundError, GitHubError
from runbook.quarantine import StatusRecord

# The methods GithubRetry may send again (urllib3's idempotent set: no POST, no PATCH).
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# How far back the last known good is looked for; a rollback further than this is a decision for a person.
HISTORY_LIMIT = 100
DEPLOYMENT_LIMIT = 50


@dataclass(frozen=True)
class Commit:
    """A commit, expanded: full SHA, first line of its message, parents."""

    sha: str
    title: str
    parents: tuple[str, ...]
    html_url: str


def connect(settings: GitHubSettings, repository: str) -> Repository:
    """A lazy PyGithub repository handle; the token is read from its reference now."""
    token = settings.token.reveal().get_secret_value() if settings.token else None
    client = Github(
        base_url=settings.base_url.rstrip("/"),
        # Lazy: objects are fetched when read, so getting the repository handle costs no request.
        lazy=True,
        # PyGithub waits 0.25 s between requests and 1 s between writes by default: seconds of MTTR for a
        # handful of calls. A rollback makes few requests; GithubRetry handles a secondary rate limit.
        seconds_between_requests=None,
        seconds_between_writes=None,
        auth=Auth.Token(token) if token else None,
        timeout=int(settings.timeout_seconds),
        # PyGithub retries 5xx and rate limits itself: the tasks do not retry on top (one layer). Reads only:
        # a POST (a workflow dispatch, a deployment record) whose answer was lost may have acted, so it is never
        # sent again blindly; the caller finds out what happened (GithubRetry's default also retries POST).
        retry=GithubRetry(total=3, backoff_factor=0.3, secondary_rate_wait=30, allowed_methods=_READS),
    )
    return client.get_repo(repository)


def _reason(exc: GithubException) -> str:
    data: Any = exc.data
    message = data.get("message") if isinstance(data, dict) else None
    return f"HTTP {exc.status}" + (f" ({message})" if message else "")


@contextmanager
def github_errors(doing: str, repository: str) -> Iterator[None]:
    """Turn PyGithub's and the network's errors into a GitHubError that says what to check."""
    try:
        yield
    except GithubException as exc:
        hint = {
            401: "the GitHub token is invalid or expired: renew the secret named in github.token",
            403: "the GitHub token lacks permission (or a rate limit was hit): check its scopes "
            "(contents:read, deployments:write, actions:write)",
            404: f"check that {repository} exists and that the token can see it",
        }.get(exc.status, "GitHub answered with an error; retry, or check githubstatus.com")
        raise GitHubError(f"GitHub: {doing} in {repository} failed: {_reason(exc)}", hint=hint) from None
    except requests.exceptions.RetryError as exc:
        # PyGithub's retries ran out on 5xx answers: GitHub is up but failing.
        status = re.search(r"too many (\d{3}) error", str(exc))
        raise GitHubError(
            f"GitHub: {doing} in {repository} failed: GitHub kept answering with errors"
            + (f" (HTTP {status.group(1)})" if status else ""),
            hint="GitHub is having trouble: check githubstatus.com, then run again (nothing was changed by this step)",
        ) from None
    except OSError as exc:  # connection refused, DNS, TLS, timeouts (requests' errors are OSErrors)
        raise GitHubError(
            f"GitHub: {doing} in {repository} failed: cannot reach the API ({type(exc).__name__})",
            hint="check github.base_url and the network from the worker",
        ) from None


def get_commit(repo: Repository, sha: str) -> Commit:
    """Expand a full or short SHA to the commit, or CommitNotFoundError."""
    with github_errors("reading commit " + sha, repo.full_name):
        try:
            # raw_data forces the fetch: a lazy commit's `sha` is otherwise the short SHA it was asked by.
            data = repo.get_commit(sha).raw_data
            message = data["commit"]["message"] or ""
            return Commit(
                sha=data["sha"],
                title=message.splitlines()[0] if message else "",
                parents=tuple(p["sha"] for p in data["parents"]),
                html_url=data["html_url"],
            )
        except GithubException as exc:
            # 404: unknown; 422: "No commit found for SHA" (also an ambiguous short SHA).
            if isinstance(exc, UnknownObjectException) or exc.status == 422:
                raise CommitNotFoundError(
                    f"commit {sha} does not exist in {repo.full_name}",
                    hint="copy the SHA again from the branch history; a short SHA must be unique",
                ) from None
            raise


def contains(repo: Repository, branch: str, sha: str) -> bool:
    """Whether `sha` is in the history of `branch`."""
    with github_errors(f"comparing {sha[:7]} with {branch}", repo.full_name):
        status = repo.compare(sha, branch).status
    return status in ("ahead", "identical")


def history(repo: Repository, start: str, limit: int = HISTORY_LIMIT) -> list[str]:
    """SHAs of the branch history from `start` backwards, newest first."""
    with github_errors(f"listing the history before {start[:7]}", repo.full_name):
        shas = []
        for commit in repo.get_commits(sha=start):
            shas.append(commit.sha)
            if len(shas) >= limit:
                break
        return shas


@dataclass(frozen=True)
class DeploymentRecord:
    """One GitHub deployment of an environment: its id, its commit and its statuses' states, newest first."""

    id: int
    sha: str
    states: tuple[str, ...]


def deployments(repo: Repository, environment: str) -> Iterator[DeploymentRecord]:
    """The environment's recent deployments, newest first (read lazily: wrap the loop in github_errors).

    Which one runs now is decided in runbook.running (`never_went_live`).
    """
    for index, deployment in enumerate(repo.get_deployments(environment=environment)):
        if index >= DEPLOYMENT_LIMIT:
            return
        states = tuple(status.state for status in deployment.get_statuses())
        yield DeploymentRecord(int(deployment.id), deployment.sha, states)


def was_healthy(states: Sequence[str]) -> bool:
    """Whether a deployment's statuses (newest first) say it was healthy: its last word, `inactive` aside
    (GitHub marks an older success inactive when a newer one succeeds), is `success`. A version rolled back
    from gets a `failure` after its success, and so is never a last known good again."""
    return next((state for state in states if state != "inactive"), None) == "success"


def healthy_shas(repo: Repository, environment: str) -> set[str]:
    """SHAs with a rollout in the environment that was recorded healthy and never marked bad afterwards."""
    with github_errors(f"reading the deployments of {environment}", repo.full_name):
        return {d.sha for d in deployments(repo, environment) if was_healthy(d.states)}


def mark_rolled_back(
    repo: Repository,
    environment: str,
    sha: str,
    description: str,
    deployment_id: int | None = None,
    log_url: str | None = None,
) -> int | None:
    """Add a `failure` status to the deployment of the version rolled back from; its id, or None.

    That deployment is `deployment_id` when the running version was read from GitHub Deployments (the very
    deployment found running), else the newest deployment of `sha` in the environment. A deployment of any
    other commit is never marked. `log_url`: the rollback's run (the quarantine guard links it).
    """
    link: Any = log_url or NotSet  # the status's log URL (PyGithub names it target_url)
    with github_errors(f"marking {sha[:7]} as rolled back", repo.full_name):
        if deployment_id is not None:
            found = repo.get_deployment(deployment_id)
            if found.sha != sha or found.environment != environment:
                return None
            found.create_status("failure", description=description[:140], target_url=link)
            return int(found.id)
        for index, deployment in enumerate(repo.get_deployments(sha=sha, environment=environment)):
            if index >= DEPLOYMENT_LIMIT:
                break
            if deployment.sha != sha:
                continue
            deployment.create_status("failure", description=description[:140], target_url=link)
            return int(deployment.id)
    return None


ROLLOUT_TASK = "deploy:rollback"
TOOL = "rollback-runbook"


@dataclass(frozen=True)
class UnfinishedRollout:
    """A rollout this tool recorded `in_progress` and never closed: its run died, or is being retried."""

    deployment_id: int
    sha: str
    digest: str
    image: str
    rollback_id: str
    from_sha: str | None
    created_at: datetime


def unfinished_rollout(repo: Repository, environment: str, max_age: timedelta) -> UnfinishedRollout | None:
    """The environment's newest deployment, when it is a rollout of this tool still `in_progress`.

    Only the newest counts: a deploy recorded after it (CI, a person) supersedes whatever it was doing.
    """
    with github_errors(f"reading the deployments of {environment}", repo.full_name):
        newest = next(iter(repo.get_deployments(environment=environment)), None)
        if newest is None or newest.task != ROLLOUT_TASK:
            return None
        payload = newest.payload if isinstance(newest.payload, dict) else {}
        created = newest.created_at.replace(tzinfo=newest.created_at.tzinfo or UTC)
        if payload.get("tool") != TOOL or not payload.get("rollback_id") or created < datetime.now(UTC) - max_age:
            return None
        latest = next(iter(newest.get_statuses()), None)
        if latest is None or latest.state not in ("in_progress", "queued", "pending"):
            return None
        return UnfinishedRollout(
            deployment_id=int(newest.id),
            sha=newest.sha,
            digest=str(payload.get("digest") or ""),
            image=str(payload.get("image") or ""),
            rollback_id=str(payload["rollback_id"]),
            from_sha=str(payload["from_sha"]) if payload.get("from_sha") else None,
            created_at=created,
        )


def record_deployment(
    repo: Repository,
    *,
    sha: str,
    environment: str,
    state: str,
    description: str,
    log_url: str | None,
    payload: dict[str, str],
) -> int:
    """Record a rollout in GitHub Deployments (with a first status) and return the deployment id."""
    with github_errors(f"recording the deployment of {sha[:7]}", repo.full_name):
        deployment = repo.create_deployment(
            ref=sha,
            task=ROLLOUT_TASK,
            auto_merge=False,
            required_contexts=[],
            payload=payload,
            environment=environment,
            description=description[:140],
            production_environment=environment == "production",
        )
        kwargs: dict[str, Any] = {"description": description[:140]}
        if log_url:
            kwargs["target_url"] = log_url  # PyGithub names the log URL target_url
        deployment.create_status(state, **kwargs)
        return deployment.id


def set_deployment_status(
    repo: Repository, deployment_id: int, *, state: str, description: str, log_url: str | None
) -> None:
    """Add a status to a recorded deployment (`success`, `failure`...)."""
    with github_errors(f"updating deployment {deployment_id}", repo.full_name):
        kwargs: dict[str, Any] = {"description": description[:140]}
        if log_url:
            kwargs["target_url"] = log_url  # PyGithub names the log URL target_url
        repo.get_deployment(deployment_id).create_status(state, **kwargs)


def first_existing(candidates: list[str], exists: Callable[[str], bool], limit: int = 5) -> str | None:
    """The first candidate for which `exists` is true, trying at most `limit`."""
    for sha in candidates[:limit]:
        if exists(sha):
            return sha
    return None


def web_url(settings: GitHubSettings, repository: str) -> str:
    """The repository's web page for the configured API (github.com, GitHub Enterprise, the sandbox)."""
    base = settings.base_url.rstrip("/")
    if base == "https://api.github.com":
        return f"https://github.com/{repository}"
    if base.endswith("/api/v3"):
        return f"{base.removesuffix('/api/v3')}/{repository}"
    return f"{base}/{repository}"


# --- the quarantine of a version rolled back from (runbook/quarantine.py says what marks and lifts it) ---------


@dataclass(frozen=True)
class DeploymentStatuses:
    """One deployment of a commit in an environment, with its statuses newest first."""

    id: int
    statuses: tuple[StatusRecord, ...]


def deployments_of(repo: Repository, sha: str, environment: str) -> list[DeploymentStatuses]:
    """The deployments of `sha` (full) in the environment, newest first, each with its statuses newest first."""
    with github_errors(f"reading the deployments of {sha[:7]} in {environment}", repo.full_name):
        found = []
        for index, deployment in enumerate(repo.get_deployments(sha=sha, environment=environment)):
            if index >= DEPLOYMENT_LIMIT:
                break
            if deployment.sha != sha:
                continue
            statuses = tuple(
                StatusRecord(status.state, status.description or "", status.log_url or status.target_url or "")
                for status in deployment.get_statuses()
            )
            found.append(DeploymentStatuses(int(deployment.id), statuses))
        return found


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout this tool recorded: its deployment, its rollback id (the first run's flow run id), where it went."""

    deployment_id: int
    rollback_id: str
    sha: str
    log_url: str


def rollout_from(repo: Repository, environment: str, from_sha: str) -> RolloutRecord | None:
    """The newest rollout this tool recorded in the environment away from `from_sha`: the rollback that marked it."""
    with github_errors(f"reading the rollbacks of {environment}", repo.full_name):
        for index, deployment in enumerate(repo.get_deployments(task=ROLLOUT_TASK, environment=environment)):
            if index >= DEPLOYMENT_LIMIT:
                break
            payload = deployment.payload if isinstance(deployment.payload, dict) else {}
            if payload.get("tool") != TOOL or payload.get("from_sha") != from_sha or not payload.get("rollback_id"):
                continue
            log_url = next(
                (s.log_url or s.target_url for s in deployment.get_statuses() if s.log_url or s.target_url), ""
            )
            return RolloutRecord(int(deployment.id), str(payload["rollback_id"]), deployment.sha, log_url or "")
    return None
