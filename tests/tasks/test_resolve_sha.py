"""Resolve SHA against the GitHub stand-in (through PyGithub) and the real registry."""

from __future__ import annotations

import pytest

from runbook import repository as repo_api
from runbook.config import RunbookConfig
from runbook.errors import CommitNotFoundError, ShaError
from runbook.images import image_exists, registry_client
from runbook.sandbox.registry import delete_tag
from runbook.sandbox.world import ENVIRONMENT, REPOSITORY, SERVICE, Sandbox
from tasks.resolve_sha import Resolution, resolve


def _resolve(sandbox: Sandbox, config: RunbookConfig, requested: str | None = None) -> Resolution:
    service = config.service(SERVICE)
    repo = repo_api.connect(config.github, service.repository)
    running = repo_api.running_sha(repo, ENVIRONMENT)
    with registry_client(config) as registry:
        return resolve(repo, service, ENVIRONMENT, requested, running, lambda s: image_exists(registry, service, s))


def test_running_version_is_the_newest_successful_deployment(sandbox: Sandbox, config: RunbookConfig) -> None:
    repo = repo_api.connect(config.github, REPOSITORY)
    assert repo_api.running_sha(repo, ENVIRONMENT) == sandbox.commits.broken
    assert repo_api.running_sha(repo, "staging") is None


def test_last_known_good_skips_a_healthy_commit_whose_image_is_gone(sandbox: Sandbox, config: RunbookConfig) -> None:
    delete_tag(sandbox.registry.base_url, "acme/shop", sandbox.commits.last_known_good)
    resolution = _resolve(sandbox, config)
    assert (resolution.sha, resolution.source) == (sandbox.commits.all[1], "last known good")
    assert resolution.running == sandbox.commits.broken and resolution.title == "Add cart"


def test_last_known_good_ignores_failed_rollouts(sandbox: Sandbox, config: RunbookConfig) -> None:
    # A newer commit deployed and failed, then the broken one went out: the failure is not "good".
    failed = sandbox.github.add_commit(REPOSITORY, "Hotfix attempt")
    sandbox.push(failed)
    sandbox.github.add_deployment(REPOSITORY, failed, ENVIRONMENT, state="failure")
    sandbox.github.add_deployment(REPOSITORY, sandbox.commits.broken, ENVIRONMENT, state="success")
    assert _resolve(sandbox, config).sha == sandbox.commits.last_known_good


def test_falls_back_to_the_first_parent_with_a_warning(sandbox: Sandbox, config: RunbookConfig) -> None:
    # A new commit was deployed and nothing before it is recorded healthy in a new environment.
    sandbox.github.add_deployment(REPOSITORY, sandbox.commits.broken, "canary", state="success")
    service = config.service(SERVICE)
    repo = repo_api.connect(config.github, service.repository)
    with registry_client(config) as registry:
        resolution = resolve(
            repo, service, "canary", None, sandbox.commits.broken, lambda s: image_exists(registry, service, s)
        )
    assert (resolution.sha, resolution.source) == (sandbox.commits.last_known_good, "first parent")
    assert resolution.warning and "first parent" in resolution.warning and "check it" in resolution.warning


def test_without_a_running_version_a_sha_is_required(sandbox: Sandbox, config: RunbookConfig) -> None:
    service = config.service(SERVICE)
    repo = repo_api.connect(config.github, service.repository)
    with pytest.raises(ShaError, match="cannot tell which version runs in staging"):
        resolve(repo, service, "staging", None, None, lambda s: True)


def test_explicit_sha_is_expanded(sandbox: Sandbox, config: RunbookConfig) -> None:
    first = sandbox.commits.all[0]
    resolution = _resolve(sandbox, config, first[:9])
    assert (resolution.sha, resolution.source, resolution.title) == (first, "given", "Initial shop")


def test_unknown_sha_says_so(sandbox: Sandbox, config: RunbookConfig) -> None:
    with pytest.raises(CommitNotFoundError, match="commit 0123456 does not exist in acme/shop"):
        _resolve(sandbox, config, "0123456")
