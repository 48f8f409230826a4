"""Which version runs now: asked of the most authoritative source there is, in order.

1. The deploy target itself (`current_version`): the Docker container's label, the webhook's version
   endpoint (`deploy.version_url`). A GitHub Actions workflow cannot tell, so it says nothing.
2. The environment's version probe (`version_probe`): a GET of the service, its SHA read from a JSON field
   (dotted path, `build.sha`) or a response header.
3. GitHub Deployments: the newest deployment of the environment counts as running unless its statuses show
   that it never went live (`never_went_live`). Not authoritative: GitHub holds what was recorded, not what runs.

The first two are authoritative: the service (or what deploys it) says what runs. A source that cannot answer
(unreachable, non-200, no field, not a commit SHA, unknown to GitHub) is skipped with a warning; it never
fails the run. A short SHA is expanded to the full one through GitHub.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from github.Repository import Repository

from runbook import repository as repo_api
from runbook.config import EnvironmentSettings, VersionProbe, WebhookTarget
from runbook.errors import CommitNotFoundError, VersionUnreadableError
from runbook.health import json_path_value as json_path_value  # the one walk of a JSON answer, shared
from runbook.http import without_userinfo

if TYPE_CHECKING:  # runbook.targets imports this module (the webhook's version endpoint)
    from runbook.targets.base import DeployTarget

GITHUB_DEPLOYMENTS = "GitHub Deployments"
VERSION_PROBE = "version probe"
UNKNOWN = "unknown"
# What each deploy target reads the running version from, for the run and the post-mortem.
TARGET_SOURCES = {"docker": "docker container label", "webhook": "webhook version endpoint"}

# A deployment whose every status is one of these never went live: it was waiting, or it errored before
# deploying (`error` is what a deploy tool writes when it knows its deploy did not happen).
NOT_LIVE_STATES = frozenset({"queued", "pending", "error"})

_SHA = re.compile(r"[0-9a-f]{7,40}")


@dataclass(frozen=True)
class RunningVersion:
    """The commit running in an environment, where that was read, and whether that source can be trusted."""

    sha: str | None
    source: str  # "docker container label", "webhook version endpoint", "version probe", "GitHub Deployments"...
    authoritative: bool  # the service or its deploy target said so (not merely a record in GitHub)
    deployment_id: int | None = None  # the GitHub deployment found running (source GitHub Deployments only)
    from_target: bool = False  # the deploy target itself said so


def never_went_live(states: Sequence[str]) -> bool:
    """Whether a deployment's statuses prove it never went live.

    `states` are newest first. It never went live when it has no status, when every status is `queued`,
    `pending` or `error`, or when its last word is `error` (the deploy could not be made: what this tool
    writes on its own rollout when it knows nothing was deployed, after its `in_progress` intent). Anything
    else (`in_progress`, `success`, `inactive`, and `failure` too: CI's post-deploy checks write `failure` on
    releases that are live) leaves it counted as running.
    """
    return not states or states[0] == "error" or all(state in NOT_LIVE_STATES for state in states)


def commit_sha(value: Any) -> str | None:
    """A commit SHA (7-40 hex, any case, trimmed) lowercased, or None when the value is not one."""
    if not isinstance(value, str):
        return None
    sha = value.strip().lower()
    return sha if _SHA.fullmatch(sha) else None


def read_version(client: httpx.Client, url: str, *, json_field: str | None = None, header: str | None = None) -> str:
    """GET `url` and read the commit SHA from a response header or a JSON field (default `sha`).

    Raises VersionUnreadableError saying why when there is no usable SHA (the URL shown without credentials).
    """
    shown = without_userinfo(url)
    try:
        response = client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise VersionUnreadableError(f"{shown} did not answer ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise VersionUnreadableError(f"{shown} answered HTTP {response.status_code}")
    if header is not None:
        value: Any = response.headers.get(header)
        where = f"header {header}"
    else:
        field = json_field or "sha"
        where = f"JSON field {field!r}"
        try:
            value = json_path_value(response.json(), field)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VersionUnreadableError(f"{shown} did not answer JSON, so it has no {where}") from None
    if value is None:
        raise VersionUnreadableError(f"{shown} answered without {where}")
    sha = commit_sha(value)
    if sha is None:
        raise VersionUnreadableError(
            f"{shown} answered {where} = {str(value)[:60]!r}, which is not a commit SHA (7-40 hex)"
        )
    return sha


def probe_version(probe: VersionProbe, *, transport: httpx.BaseTransport | None = None) -> str:
    """The SHA the service itself reports through its version probe, or VersionUnreadableError."""
    with httpx.Client(timeout=probe.timeout_seconds, transport=transport, follow_redirects=True) as client:
        return read_version(client, probe.url, json_field=probe.json_field, header=probe.header)


def find_running(
    repo: Repository,
    environment: str,
    settings: EnvironmentSettings,
    target: DeployTarget,
    warn: Callable[[str], None],
) -> RunningVersion:
    """The version running in the environment, from the most authoritative source that can tell."""
    source = TARGET_SOURCES.get(target.name, f"{target.name} deploy target")
    reported = target.current_version()
    sha = _full(repo, reported, source, warn)
    if sha:
        return RunningVersion(sha, source, authoritative=True, from_target=True)
    deploy = settings.deploy
    if reported is None and isinstance(deploy, WebhookTarget) and deploy.version_url:
        warn(
            f"the {source} {without_userinfo(deploy.version_url)} did not say which version runs (why: in the worker's "
            "log); trying the next source"
        )

    probe = settings.version_probe
    if probe is not None:
        try:
            sha = _full(repo, probe_version(probe), VERSION_PROBE, warn)
        except VersionUnreadableError as exc:
            warn(f"the version probe could not tell which version runs: {exc}; trying the next source")
        if sha:
            return RunningVersion(sha, VERSION_PROBE, authoritative=True)

    with repo_api.github_errors(f"reading the deployments of {environment}", repo.full_name):
        for deployment in repo_api.deployments(repo, environment):
            if not never_went_live(deployment.states):
                return RunningVersion(
                    deployment.sha, GITHUB_DEPLOYMENTS, authoritative=False, deployment_id=deployment.id
                )
    return RunningVersion(None, UNKNOWN, authoritative=False)


def _full(repo: Repository, value: str | None, source: str, warn: Callable[[str], None]) -> str | None:
    """A SHA read from a source, validated and expanded to 40 characters through GitHub; None if unusable."""
    if not value:
        return None
    sha = commit_sha(value)
    if sha is None:
        warn(f"the {source} reports {value[:60]!r}, which is not a commit SHA; trying the next source")
        return None
    if len(sha) == 40:
        return sha
    try:
        return repo_api.get_commit(repo, sha).sha
    except CommitNotFoundError:
        warn(f"the {source} reports {sha}, which is no commit of {repo.full_name}; trying the next source")
        return None
