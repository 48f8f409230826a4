"""The service's GitHub repository as the runbook needs it: history, deployments, commits (PyGithub)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from github import Auth, Github, GithubException, GithubRetry, UnknownObjectException
from github.Repository import Repository

from runbook.config import GitHubSettings
from runbook.errors import CommitNotFoundError, GitHubError

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
        # PyGithub retries 5xx and rate limits itself: the tasks do not retry on top (one layer).
        retry=GithubRetry(total=3, backoff_factor=0.3, secondary_rate_wait=30),
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


def _deployments(repo: Repository, environment: str) -> Iterator[tuple[str, list[str]]]:
    """(sha, states newest first) of the environment's recent deployments, newest first."""
    for index, deployment in enumerate(repo.get_deployments(environment=environment)):
        if index >= DEPLOYMENT_LIMIT:
            return
        yield deployment.sha, [status.state for status in deployment.get_statuses()]


def running_sha(repo: Repository, environment: str) -> str | None:
    """The version deployed now: the newest deployment whose newest status is `success`."""
    with github_errors(f"reading the deployments of {environment}", repo.full_name):
        for sha, states in _deployments(repo, environment):
            if states and states[0] == "success":
                return sha
    return None


def was_healthy(states: list[str]) -> bool:
    """Whether a deployment's statuses (newest first) say it was healthy: its last word, `inactive` aside
    (GitHub marks an older success inactive when a newer one succeeds), is `success`. A version rolled back
    from gets a `failure` after its success, and so is never a last known good again."""
    return next((state for state in states if state != "inactive"), None) == "success"


def healthy_shas(repo: Repository, environment: str) -> set[str]:
    """SHAs with a rollout in the environment that was recorded healthy and never marked bad afterwards."""
    with github_errors(f"reading the deployments of {environment}", repo.full_name):
        return {sha for sha, states in _deployments(repo, environment) if was_healthy(states)}


def mark_rolled_back(repo: Repository, environment: str, sha: str, description: str) -> int | None:
    """Add a `failure` status to the newest deployment of `sha` in the environment (the version rolled back from)."""
    with github_errors(f"marking {sha[:7]} as rolled back", repo.full_name):
        for index, deployment in enumerate(repo.get_deployments(sha=sha, environment=environment)):
            if index >= DEPLOYMENT_LIMIT:
                break
            deployment.create_status("failure", description=description[:140])
            return int(deployment.id)
    return None


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
            task="deploy:rollback",
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


def compare_url(settings: GitHubSettings, repository: str, base: str, head: str) -> str:
    """The web page of the changes between two commits (built, not fetched)."""
    return f"{web_url(settings, repository)}/compare/{base[:12]}...{head[:12]}"
