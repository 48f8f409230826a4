"""The seed's deploy: dispatch the `rollback-production` workflow with the SHA, follow the run to its end.

Exactly once. Every dispatch carries the rollback id (input `rollback_id`, shown in the workflow's
`run-name`), so its run can be found through the workflow-runs API. A dispatch is a POST that starts work:
PyGithub does not send it again (see runbook.repository), and when its answer is lost (5xx, reset, timeout)
the run is looked for by that id, for `lookup_seconds`:

- found: "dispatched: run N", followed;
- GitHub refused it (4xx), or the request never left: "not dispatched" (nothing changed);
- not found in time: dispatched again once, with the same id (GitHub showed no run for it);
  still nothing: "unknown: check <runs page>", and no further dispatch.

A run that resumes a rollback (a Retry, or a run that found an unfinished one) looks for the run first and
dispatches only when there is none. The digest verified in the registry is an input too: the workflow
deploys exactly `IMAGE@digest`. A run whose status cannot be read for `unreadable_status_seconds` is left to
the health check ("dispatched as run N; its status cannot be read; checking health").
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import requests
from github import GithubException
from github.Repository import Repository
from github.WorkflowRun import WorkflowRun

from runbook import messages, progress
from runbook import repository as repo_api
from runbook.config import RunbookConfig
from runbook.errors import DeployError, GitHubError
from runbook.targets.base import DeployRequest, DeployResult
from runbook.targets.github_actions_settings import GitHubActionsTarget

log = logging.getLogger(__name__)

# Clocks differ: the `created` filter of the run search starts this much before the dispatch.
_CLOCK_MARGIN = timedelta(minutes=5)
_RUNS_SCANNED = 100
_LOOKUP_INTERVAL = 1.0


def build(config: RunbookConfig, service_name: str, environment: str) -> GitHubActionsDeployTarget:
    """The github-actions target of an environment: the service's repository (a lazy handle) and its workflow."""
    service = config.service(service_name)
    settings = config.deploy_settings(service_name, environment, GitHubActionsTarget)
    repo = repo_api.connect(config.github, service.repository)
    runs_url = f"{repo_api.web_url(config.github, service.repository)}/actions/workflows/{settings.workflow}"
    return GitHubActionsDeployTarget(repo, settings, service.branch, environment, runs_url)


class GitHubActionsDeployTarget:
    """Deploys through the application's `rollback-production` workflow (workflow_dispatch, input `sha`)."""

    name = "github-actions"

    def __init__(
        self, repo: Repository, settings: GitHubActionsTarget, branch: str, environment: str, runs_url: str = ""
    ) -> None:
        self._repo = repo
        self._settings = settings
        self._ref = settings.ref or branch
        self._environment = environment
        self._runs_url = runs_url or f"the Actions tab of {repo.full_name} ({settings.workflow})"

    def current_version(self) -> str | None:
        # A workflow cannot say what runs. What GitHub Deployments record is read (as a non-authoritative
        # source) by runbook.running, after the version probe.
        return None

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
        if request.resume_since is not None:
            since = request.resume_since - _CLOCK_MARGIN
            recent = datetime.now(UTC) - request.resume_since < timedelta(seconds=self._settings.lookup_seconds)
            # A dispatch sent just before the crash may not be listed yet: look for a while, as after a lost answer.
            found = self._look_for(workflow, request, since) if recent else self._find_run(workflow, request, since)
            if found is not None:
                log.info("run %s of rollback %s exists: following it, not dispatching", found.id, request.rollback_id)
                return self._follow(found.id, found.html_url, "found again")
        for attempt in (1, 2):
            since = datetime.now(UTC) - _CLOCK_MARGIN
            dispatched, lost = self._dispatch(workflow, request)
            if dispatched is not None:
                return self._follow(dispatched.id, dispatched.html_url, "dispatched")
            found = self._look_for(workflow, request, since)
            if found is not None:
                log.info("the dispatch's answer was lost (%s) but its run %s exists: following it", lost, found.id)
                return self._follow(found.id, found.html_url, "dispatched (answer lost, run found)")
            if not self._settings.rollback_id_input:
                raise DeployError(
                    f"unknown whether the rollback workflow started: GitHub's answer to the dispatch was lost ({lost})"
                    " and without a rollback_id input its run cannot be told from others",
                    hint=f"check {self._runs_url} before doing anything; add the rollback_id input to the workflow "
                    "(deployments/github/rollback-production.yml) so that the runbook can tell by itself",
                    changed=None,
                )
            if attempt == 1 and lost != "accepted without a run id":
                log.warning(
                    "not dispatched: GitHub's answer was lost (%s) and no run of rollback %s appeared within %g s; "
                    "dispatching once more with the same id",
                    lost,
                    request.rollback_id,
                    self._settings.lookup_seconds,
                )
                continue
            raise DeployError(
                f"unknown whether the rollback workflow started: GitHub's answer to the dispatch was lost ({lost}) "
                f"and no run of rollback {request.rollback_id} appeared within {self._settings.lookup_seconds:g} s",
                hint=f"check {self._runs_url} for a run named after {request.rollback_id} before doing anything; "
                "a Retry of this flow run looks for that run first and never dispatches twice",
                changed=None,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def finish(self, result: DeployResult) -> str | None:
        return None  # the workflow keeps nothing to clean up

    # --- dispatching ------------------------------------------------------------------------------

    def _inputs(self, request: DeployRequest) -> dict[str, str]:
        inputs = {self._settings.sha_input: request.sha}
        if self._settings.digest_input:
            inputs[self._settings.digest_input] = request.digest
        if self._settings.rollback_id_input:
            inputs[self._settings.rollback_id_input] = request.rollback_id
        return inputs

    def _dispatch(self, workflow: Any, request: DeployRequest) -> tuple[WorkflowRun | None, str]:
        """(the run, "") when GitHub answered with it; (None, what was lost) when the answer was lost."""
        try:
            run = workflow.create_dispatch(
                ref=self._ref, inputs=self._inputs(request), throw=True, return_run_details=True
            )
        except GithubException as exc:
            if exc.status >= 500:
                return None, f"HTTP {exc.status}"
            message = exc.data.get("message") if isinstance(exc.data, dict) else None
            raise DeployError(
                f"not dispatched: GitHub refused to start {self._settings.workflow} on {self._ref}: HTTP {exc.status}"
                + (f" ({message})" if message else ""),
                hint=self._refusal_hint(str(message or "")),
                changed=False,
            ) from None
        except (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError) as exc:
            raise self._not_sent(exc) from None
        except requests.exceptions.ConnectionError as exc:
            if _never_sent(exc):
                raise self._not_sent(exc) from None
            return None, f"connection lost ({type(exc).__name__})"
        except OSError as exc:  # a read timeout: the request went out, the answer did not come back
            return None, f"no answer ({type(exc).__name__})"
        if not isinstance(run, WorkflowRun):
            # A 204: this GitHub (Enterprise?) predates return_run_details; the run exists, find it.
            return None, "accepted without a run id"
        return run, ""

    def _not_sent(self, exc: BaseException) -> DeployError:
        return DeployError(
            f"not dispatched: cannot reach GitHub to start {self._settings.workflow} ({type(exc).__name__})",
            hint="the request never left (nothing changed): check the network and GitHub, then run again",
            changed=False,
        )

    def _refusal_hint(self, message: str) -> str:
        if "Unexpected inputs" in message:
            return (
                "nothing changed: the workflow lacks the digest/rollback_id inputs: update it from "
                "deployments/github/rollback-production.yml (or set deploy.digest_input / deploy.rollback_id_input "
                "to null, losing the exactly-once and by-digest guarantees)"
            )
        return (
            f"nothing changed: the workflow must have a workflow_dispatch trigger with a required "
            f"'{self._settings.sha_input}' input, and the token needs actions:write"
        )

    # --- finding a run again ----------------------------------------------------------------------

    def _find_run(self, workflow: Any, request: DeployRequest, since: datetime) -> WorkflowRun | None:
        """The run of this rollback (its id in the run-name), dispatched since `since`; None if there is none."""
        if not self._settings.rollback_id_input:
            return None
        created = ">=" + since.strftime("%Y-%m-%dT%H:%M:%SZ")
        with repo_api.github_errors(f"looking for the run of rollback {request.rollback_id}", self._repo.full_name):
            for index, run in enumerate(workflow.get_runs(event="workflow_dispatch", created=created)):
                if index >= _RUNS_SCANNED:
                    break
                if request.rollback_id in (run.display_title or ""):
                    return run  # type: ignore[no-any-return]
        return None

    def _look_for(self, workflow: Any, request: DeployRequest, since: datetime) -> WorkflowRun | None:
        """Poll for the run of this rollback for `lookup_seconds` (runs show up in the list within seconds)."""
        deadline = time.monotonic() + self._settings.lookup_seconds
        while True:
            try:
                found = self._find_run(workflow, request, since)
            except GitHubError as exc:
                log.warning("%s; looking again", exc.message)
                found = None
            if found is not None or not self._settings.rollback_id_input:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(_LOOKUP_INTERVAL, remaining))

    # --- following ----------------------------------------------------------------------------------

    def _follow(self, run_id: int, link: str, how: str) -> DeployResult:
        started = time.monotonic()
        deadline = started + self._settings.timeout_seconds
        status = "queued"
        unreadable_since: float | None = None
        while time.monotonic() < deadline:
            try:
                with repo_api.github_errors(f"reading workflow run {run_id}", self._repo.full_name):
                    run = self._repo.get_workflow_run(run_id)
                    status, conclusion = run.status, run.conclusion
                unreadable_since = None
            except GitHubError as exc:
                # The run goes on without us: a failed poll is not a failed deploy; poll again, for a while.
                status, conclusion = f"unreadable ({exc.message})", None
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since >= self._settings.unreadable_status_seconds:
                    return DeployResult(
                        self.name,
                        skipped=False,
                        detail=f"{how}: run {run_id}; its status cannot be read "
                        f"({self._settings.unreadable_status_seconds:g} s of errors); checking health",
                        link=link,
                        confirmed=False,
                    )
            _report(run_id, "unreadable" if unreadable_since else status, conclusion, time.monotonic() - started)
            if status == "completed":
                if conclusion == "success":
                    return DeployResult(self.name, skipped=False, detail=f"{how}: run {run_id} succeeded", link=link)
                raise DeployError(
                    f"{how}: the rollback workflow run {run_id} ended with '{conclusion}'",
                    hint=f"open {link} to see which job failed",
                    changed=None,
                )
            time.sleep(min(self._settings.poll_interval_seconds, max(0.0, deadline - time.monotonic())))
        raise DeployError(
            f"{how}: the rollback workflow run {run_id} did not finish within "
            f"{self._settings.timeout_seconds:.0f} s (last status: {status})",
            hint=f"open {link}: it may still be running; do not start another rollback until it ends",
            changed=None,
        )


def _report(run_id: int, status: str, conclusion: str | None, seconds: float) -> None:
    """How far the run is, for whoever follows the deploy (runbook/progress.py).

    How far a workflow run is cannot be told from its status (elapsed over `timeout_seconds` would say 3 % of
    a run about to end): None until it completed, 1 once it succeeded.
    """
    if status == "completed":
        fraction = 1.0 if conclusion == "success" else None
        progress.report(
            fraction,
            partial(messages.progress_workflow_run_ended, run=run_id, conclusion=str(conclusion), seconds=seconds),
        )
    else:
        progress.report(None, partial(messages.progress_workflow_run, run=run_id, status=status, seconds=seconds))


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether the connection failed before the request could be sent (refused, DNS): nothing reached GitHub."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    reason: Any = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)
