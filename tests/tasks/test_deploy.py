"""The github-actions deploy target against the GitHub stand-in, through PyGithub."""

from __future__ import annotations

import pytest
from prefect.logging import disable_run_logger

from runbook.config import RunbookConfig, load_config
from runbook.errors import DeployError
from runbook.sandbox.world import ENVIRONMENT, SERVICE, Sandbox
from runbook.targets import DeployRequest, DeployTarget, build_target
from tasks.deploy import deploy


def _request(sha: str) -> DeployRequest:
    return DeployRequest(SERVICE, ENVIRONMENT, sha, "img@sha256:" + "0" * 64, "sha256:" + "0" * 64, "test", "run-1")


def _target(config: RunbookConfig) -> DeployTarget:
    return build_target(config, SERVICE, ENVIRONMENT)


def test_dispatches_with_the_sha_and_follows_the_run(sandbox: Sandbox, config: RunbookConfig) -> None:
    good = sandbox.commits.last_known_good
    result = _target(config).deploy(_request(good))
    assert not result.skipped and result.link and "/actions/runs/" in result.link
    [dispatch] = sandbox.github.dispatches()
    assert dispatch.body == {"ref": "main", "inputs": {"sha": good}, "return_run_details": True}
    assert sandbox.app.version == good


def test_skips_when_the_target_already_runs_that_version(sandbox: Sandbox, config: RunbookConfig) -> None:
    with disable_run_logger():
        result = deploy.fn(config, _request(sandbox.commits.broken))
    assert result.skipped and "already runs" in result.detail
    assert sandbox.github.dispatches() == []


def test_a_run_past_its_deadline_is_a_clear_failure(sandbox: Sandbox) -> None:
    slow = sandbox.write_config(
        sandbox.config_data(deploy={"type": "github-actions", "timeout_seconds": 0.3, "poll_interval_seconds": 0.05}),
        "slow.yaml",
    )
    sandbox.github.run_step_seconds = 2.0
    with pytest.raises(DeployError, match=r"did not finish within 0 s \(last status: (queued|in_progress)\)") as caught:
        _target(load_config(slow)).deploy(_request(sandbox.commits.last_known_good))
    assert "do not start another rollback" in str(caught.value)


def test_a_workflow_without_the_sha_input_is_refused(sandbox: Sandbox) -> None:
    wrong = sandbox.write_config(
        sandbox.config_data(deploy={"type": "github-actions", "sha_input": "commit"}), "wrong-input.yaml"
    )
    with pytest.raises(DeployError, match=r"HTTP 422 \(Required input 'sha' not provided\)"):
        _target(load_config(wrong)).deploy(_request(sandbox.commits.last_known_good))
    assert sandbox.app.version == sandbox.commits.broken


def test_a_missing_workflow_says_where_the_template_is(sandbox: Sandbox) -> None:
    missing = sandbox.write_config(
        sandbox.config_data(deploy={"type": "github-actions", "workflow": "nope.yml"}), "missing.yaml"
    )
    target = _target(load_config(missing))
    with pytest.raises(DeployError, match=r"deployments/github/rollback-production\.yml"):
        target.preflight()
    with pytest.raises(DeployError):
        target.deploy(_request(sandbox.commits.last_known_good))
    assert sandbox.github.dispatches() == []


def test_preflight_reads_only(sandbox: Sandbox, config: RunbookConfig) -> None:
    assert "is active" in _target(config).preflight()
    assert sandbox.github.mutating_requests() == []
