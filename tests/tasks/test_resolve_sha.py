"""Resolve SHA against the GitHub stand-in (through PyGithub) and the real registry."""

from __future__ import annotations

import pytest

from runbook import repository as repo_api
from runbook.config import RunbookConfig, load_config
from runbook.errors import AlreadyRunningError, CommitNotFoundError, ShaError
from runbook.running import GITHUB_DEPLOYMENTS, VERSION_PROBE, RunningVersion, find_running
from runbook.service_images import image_exists, registry_client
from runbook.targets.factory import build_target
from sandbox.registry import delete_tag
from sandbox.world import ENVIRONMENT, REPOSITORY, SERVICE, Sandbox
from tasks.resolve_sha import Resolution, resolve


def _running(
    config: RunbookConfig, warnings: list[str] | None = None, environment: str = ENVIRONMENT
) -> RunningVersion:
    repo = repo_api.connect(config.github, REPOSITORY)
    target = build_target(config, SERVICE, ENVIRONMENT)
    settings = config.environment(SERVICE, ENVIRONMENT)
    return find_running(repo, environment, settings, target, (warnings if warnings is not None else []).append)


def _resolve(
    sandbox: Sandbox, config: RunbookConfig, requested: str | None = None, running: RunningVersion | None = None
) -> Resolution:
    service = config.service(SERVICE)
    repo = repo_api.connect(config.github, service.repository)
    current = running or _running(config)
    with registry_client(config) as registry:
        return resolve(repo, service, ENVIRONMENT, requested, current, lambda s: image_exists(registry, service, s))


def test_running_version_is_the_newest_deployment_that_went_live(sandbox: Sandbox, config: RunbookConfig) -> None:
    newest = sandbox.github.deployments(REPOSITORY, ENVIRONMENT)[0]["id"]
    assert _running(config) == RunningVersion(sandbox.commits.broken, GITHUB_DEPLOYMENTS, False, newest)
    # CI's post-deploy check failed on a release that went out: it runs. One that errored before going out does not.
    live = sandbox.github.add_commit(REPOSITORY, "Live but failing checks")
    live_id = sandbox.github.add_deployment(REPOSITORY, live, ENVIRONMENT, states=("in_progress", "failure"))
    never = sandbox.github.add_commit(REPOSITORY, "Never went out")
    sandbox.github.add_deployment(REPOSITORY, never, ENVIRONMENT, states=("queued", "error"))
    sandbox.github.add_deployment(REPOSITORY, never, ENVIRONMENT, states=())
    assert _running(config) == RunningVersion(live, GITHUB_DEPLOYMENTS, False, live_id)
    assert _running(config, environment="staging") == RunningVersion(None, "unknown", False)


def test_a_version_probe_wins_and_a_failing_one_falls_through(sandbox: Sandbox) -> None:
    def config_with(probe: dict[str, str]) -> RunbookConfig:
        return load_config(sandbox.write_config(sandbox.config_data(version_probe=probe), "probe.yaml"))

    first = sandbox.commits.all[0]
    sandbox.app.deploy(first)  # run by hand, recorded nowhere: only the service knows
    short = config_with({"url": f"{sandbox.app.url}/version", "json_field": "build.sha"})
    assert _running(short) == RunningVersion(first, VERSION_PROBE, True)  # the short SHA, expanded by GitHub
    assert _running(config_with({"url": sandbox.app.url, "header": "X-Version"})).sha == first
    warnings: list[str] = []
    missing = config_with({"url": f"{sandbox.app.url}/version", "json_field": "build.id"})
    assert _running(missing, warnings).source == GITHUB_DEPLOYMENTS
    assert warnings == [
        f"the version probe could not tell which version runs: {sandbox.app.url}/version answered without "
        "JSON field 'build.id'; trying the next source"
    ]
    assert _running(config_with({"url": "http://127.0.0.1:9/version"}), warnings).source == GITHUB_DEPLOYMENTS


def test_a_given_sha_is_refused_as_running_only_on_an_authoritative_word(
    sandbox: Sandbox, config: RunbookConfig
) -> None:
    broken = sandbox.commits.broken
    recorded = _resolve(sandbox, config, broken, RunningVersion(broken, GITHUB_DEPLOYMENTS, False, 1))
    assert (recorded.sha, recorded.source, recorded.running_source) == (broken, "given", GITHUB_DEPLOYMENTS)
    assert recorded.warning and "nothing confirms it runs" in recorded.warning
    with pytest.raises(AlreadyRunningError, match="already the version running in production"):
        _resolve(sandbox, config, broken, RunningVersion(broken, VERSION_PROBE, True))


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
        running = RunningVersion(sandbox.commits.broken, GITHUB_DEPLOYMENTS, False)
        resolution = resolve(repo, service, "canary", None, running, lambda s: image_exists(registry, service, s))
    assert (resolution.sha, resolution.source) == (sandbox.commits.last_known_good, "first parent")
    assert resolution.warning and "first parent" in resolution.warning and "check it" in resolution.warning


def test_without_a_running_version_a_sha_is_required(sandbox: Sandbox, config: RunbookConfig) -> None:
    service = config.service(SERVICE)
    repo = repo_api.connect(config.github, service.repository)
    with pytest.raises(ShaError, match="cannot tell which version runs in staging"):
        resolve(repo, service, "staging", None, RunningVersion(None, "unknown", False), lambda s: True)


def test_explicit_sha_is_expanded(sandbox: Sandbox, config: RunbookConfig) -> None:
    first = sandbox.commits.all[0]
    resolution = _resolve(sandbox, config, first[:9])
    assert (resolution.sha, resolution.source, resolution.title) == (first, "given", "Initial shop")


def test_unknown_sha_says_so(sandbox: Sandbox, config: RunbookConfig) -> None:
    with pytest.raises(CommitNotFoundError, match="commit 0123456 does not exist in acme/shop"):
        _resolve(sandbox, config, "0123456")
