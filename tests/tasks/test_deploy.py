"""The github-actions deploy target against the GitHub stand-in, through PyGithub."""

from __future__ import annotations

import httpx
import pytest
from prefect.logging import disable_run_logger

from runbook.config import RunbookConfig, load_config
from runbook.errors import DeployError
from runbook.targets import DeployRequest, DeployTarget
from runbook.targets.factory import build_target
from sandbox.world import ENVIRONMENT, SERVICE, Sandbox
from tasks.deploy import deploy


def _request(sandbox: Sandbox, sha: str) -> DeployRequest:
    """A request for the image pushed for `sha`, pinned by its digest in the real registry."""
    answer = httpx.head(
        f"{sandbox.registry.base_url}/v2/acme/shop/manifests/{sha}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=5,
    )
    digest = answer.headers["Docker-Content-Digest"]
    return DeployRequest(SERVICE, ENVIRONMENT, sha, f"{sandbox.image}@{digest}", digest, "test", "rb-test-1")


def _target(config: RunbookConfig) -> DeployTarget:
    return build_target(config, SERVICE, ENVIRONMENT)


def test_dispatches_with_the_sha_and_follows_the_run(sandbox: Sandbox, config: RunbookConfig) -> None:
    good = sandbox.commits.last_known_good
    result = _target(config).deploy(_request(sandbox, good))
    assert not result.skipped and result.link and "/actions/runs/" in result.link
    [dispatch] = sandbox.github.dispatches()
    request = _request(sandbox, good)
    inputs = {"sha": good, "digest": request.digest, "rollback_id": "rb-test-1"}
    assert dispatch.body == {"ref": "main", "inputs": inputs, "return_run_details": True}
    assert sandbox.deployed_digests == [request.digest]
    assert sandbox.app.version == good


def test_skips_when_the_target_already_runs_that_version(sandbox: Sandbox, config: RunbookConfig) -> None:
    # A workflow cannot tell what runs, so the github-actions target never skips; a webhook with a version
    # endpoint can (here the sandbox app is its own deploy API).
    deploy_api = {"type": "webhook", "url": f"{sandbox.app.url}/deploy", "version_url": f"{sandbox.app.url}/version"}
    webhook = load_config(sandbox.write_config(sandbox.config_data(deploy=deploy_api), "webhook.yaml"))
    assert _target(config).current_version() is None
    request = _request(sandbox, sandbox.commits.broken)
    with disable_run_logger():
        result = deploy.fn(_target(webhook), request)  # the target asked: it says what runs
    assert result.skipped and "already runs" in result.detail
    assert sandbox.app.deploys == [sandbox.commits.broken]
    with disable_run_logger():  # what it said while the SHA was resolved: not asked a second time
        again = deploy.fn(_target(webhook), request, sandbox.commits.broken, asked=True)
    assert again.skipped and sandbox.app.deploys == [sandbox.commits.broken]


def test_a_version_known_while_resolving_is_not_read_again(sandbox: Sandbox) -> None:
    deploy_api = {"type": "webhook", "url": f"{sandbox.app.url}/deploy", "version_url": f"{sandbox.app.url}/version"}
    webhook = load_config(sandbox.write_config(sandbox.config_data(deploy=deploy_api), "webhook.yaml"))
    target = _target(webhook)
    reads = sandbox.app.version_reads
    with disable_run_logger():
        result = deploy.fn(target, _request(sandbox, sandbox.commits.last_known_good), None, asked=True)
    assert not result.skipped and sandbox.app.version == sandbox.commits.last_known_good
    assert sandbox.app.version_reads == reads  # deployed on what resolve read, without asking again


def test_a_run_past_its_deadline_is_a_clear_failure(sandbox: Sandbox) -> None:
    slow = sandbox.write_config(
        sandbox.config_data(deploy={"type": "github-actions", "timeout_seconds": 0.3, "poll_interval_seconds": 0.05}),
        "slow.yaml",
    )
    sandbox.github.run_step_seconds = 2.0
    with pytest.raises(DeployError, match=r"did not finish within 0 s \(last status: (queued|in_progress)\)") as caught:
        _target(load_config(slow)).deploy(_request(sandbox, sandbox.commits.last_known_good))
    assert "do not start another rollback" in str(caught.value)


def test_a_workflow_without_the_sha_input_is_refused(sandbox: Sandbox) -> None:
    wrong = sandbox.write_config(
        sandbox.config_data(deploy={"type": "github-actions", "sha_input": "commit"}), "wrong-input.yaml"
    )
    with pytest.raises(DeployError, match=r"HTTP 422 \(Required input 'sha' not provided\)"):
        _target(load_config(wrong)).deploy(_request(sandbox, sandbox.commits.last_known_good))
    assert sandbox.app.version == sandbox.commits.broken


def test_a_missing_workflow_says_where_the_template_is(sandbox: Sandbox) -> None:
    missing = sandbox.write_config(
        sandbox.config_data(deploy={"type": "github-actions", "workflow": "nope.yml"}), "missing.yaml"
    )
    target = _target(load_config(missing))
    with pytest.raises(DeployError, match=r"deployments/github/rollback-production\.yml"):
        target.preflight()
    with pytest.raises(DeployError):
        target.deploy(_request(sandbox, sandbox.commits.last_known_good))
    assert sandbox.github.dispatches() == []


def test_preflight_reads_only(sandbox: Sandbox, config: RunbookConfig) -> None:
    assert "is active" in _target(config).preflight()
    assert sandbox.github.mutating_requests() == []
