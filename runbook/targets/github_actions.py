"""The seed's deploy: dispatch the `rollback-production` workflow with the SHA, follow the run to its end."""

from __future__ import annotations

import time
from typing import Any

from github import GithubException
from github.Repository import Repository
from github.WorkflowRun import WorkflowRun

from runbook import repository as repo_api
from runbook.config import GitHubActionsTarget
from runbook.errors import DeployError, GitHubError
from runbook.targets.base import DeployRequest, DeployResult


class GitHubActionsDeployTarget:
    """Deploys through the application's `rollback-production` workflow (workflow_dispatch, input `sha`)."""

    name = "github-actions"

    def __init__(self, repo: Repository, settings: GitHubActionsTarget, branch: str, environment: str) -> None:
        self._repo = repo
        self._settings = settings
        self._ref = settings.ref or branch
        self._environment = environment

    def current_version(self) -> str | None:
        # A workflow cannot say what runs; the deployments recorded in GitHub can.
        return repo_api.running_sha(self._repo, self._environment)

    def _workflow(self) -> Any:
        try:
            with repo_api.github_errors(f"reading workflow {self._settings.workflow}", self._repo.full_name):
                workflow = self._repo.get_workflow(self._settings.workflow)
                workflow.raw_data  # noqa: B018 -- fetch now (lazy client), so a 404 is reported here
                return workflow
        except GitHubError as exc:
            raise DeployError(
                exc.message,
                hint=f"create .github/workflows/{self._settings.workflow} in {self._repo.full_name} from "
                "deployments/github/rollback-production.yml, or fix deploy.workflow in the configuration",
            ) from None

    def preflight(self) -> str:
        workflow = self._workflow()
        if workflow.state != "active":
            raise DeployError(
                f"workflow {self._settings.workflow} is {workflow.state}",
                hint="enable it in the repository's Actions tab",
            )
        return f"workflow {workflow.path} is active in {self._repo.full_name}"

    def deploy(self, request: DeployRequest) -> DeployResult:
        workflow = self._workflow()
        try:
            run = workflow.create_dispatch(
                ref=self._ref,
                inputs={self._settings.sha_input: request.sha},
                throw=True,
                return_run_details=True,
            )
        except GithubException as exc:
            message = exc.data.get("message") if isinstance(exc.data, dict) else None
            raise DeployError(
                f"GitHub refused to start {self._settings.workflow} on {self._ref}: HTTP {exc.status}"
                + (f" ({message})" if message else ""),
                hint=f"the workflow must have a workflow_dispatch trigger with a required '{self._settings.sha_input}'"
                " input, and the token needs actions:write",
            ) from None
        except OSError as exc:
            raise DeployError(
                f"cannot reach GitHub to start {self._settings.workflow} ({type(exc).__name__})",
                hint="nothing was deployed; check the network and run again",
            ) from None
        if not isinstance(run, WorkflowRun):
            raise DeployError(
                "GitHub accepted the dispatch but returned no run id",
                hint="this GitHub (Enterprise?) predates return_run_details; follow the run in the Actions tab",
            )
        return self._follow(run.id, run.html_url)

    def finish(self, result: DeployResult) -> str | None:
        return None  # the workflow keeps nothing to clean up

    def _follow(self, run_id: int, link: str) -> DeployResult:
        deadline = time.monotonic() + self._settings.timeout_seconds
        status = "queued"
        while time.monotonic() < deadline:
            try:
                with repo_api.github_errors(f"reading workflow run {run_id}", self._repo.full_name):
                    run = self._repo.get_workflow_run(run_id)
                    status, conclusion = run.status, run.conclusion
            except GitHubError:
                # The run goes on without us: a failed poll is not a failed deploy; poll again.
                status, conclusion = "unknown (GitHub did not answer)", None
            if status == "completed":
                if conclusion == "success":
                    return DeployResult(self.name, skipped=False, detail=f"workflow run {run_id} succeeded", link=link)
                raise DeployError(
                    f"the rollback workflow run {run_id} ended with '{conclusion}'",
                    hint=f"open {link} to see which job failed",
                )
            time.sleep(min(self._settings.poll_interval_seconds, max(0.0, deadline - time.monotonic())))
        raise DeployError(
            f"the rollback workflow run {run_id} did not finish within {self._settings.timeout_seconds:.0f} s "
            f"(last status: {status})",
            hint=f"open {link}: it may still be running; do not start another rollback until it ends",
        )
