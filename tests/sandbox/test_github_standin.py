"""GitHubStandIn driven by the real PyGithub client: history, compare, deployments, dispatches, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from github import Auth, BadCredentialsException, Github, GithubException, UnknownObjectException
from github.Repository import Repository
from github.WorkflowRun import WorkflowRun

from sandbox.github_standin import GitHubStandIn, WorkflowRunRequest

TOKEN = "ghp_test_token_not_secret"
REPO = "acme/shop"


class Deployer:
    """The `on_workflow_run` callback: remembers each request and answers the configured conclusion.

    While `gate` is clear the deploy "runs" (blocks), which holds the run in_progress for as long as a
    test needs to look at it, whatever the machine's speed.
    """

    def __init__(self) -> None:
        self.calls: list[WorkflowRunRequest] = []
        self.conclusion = "success"
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, request: WorkflowRunRequest) -> str:
        with self.lock:
            self.calls.append(request)
        self.gate.wait(timeout=10)
        if self.conclusion == "raise":
            raise RuntimeError("deploy script crashed")
        return self.conclusion


@pytest.fixture
def deployer() -> Deployer:
    return Deployer()


@pytest.fixture
def gh(deployer: Deployer) -> Iterator[GitHubStandIn]:
    with GitHubStandIn(token=TOKEN, run_step_seconds=0.05, on_workflow_run=deployer) as standin:
        standin.add_repository(REPO)
        standin.add_workflow(REPO)
        yield standin


@pytest.fixture
def shas(gh: GitHubStandIn) -> list[str]:
    return [gh.add_commit(REPO, f"commit {n}") for n in range(5)]


def make_client(gh: GitHubStandIn, token: str = TOKEN, **options: Any) -> Github:
    """A real PyGithub client for the stand-in, without PyGithub's default 0.25 s / 1 s request throttle."""
    return Github(
        base_url=gh.base_url,
        auth=Auth.Token(token),
        seconds_between_requests=None,
        seconds_between_writes=None,
        **options,
    )


@pytest.fixture
def client(gh: GitHubStandIn) -> Iterator[Github]:
    github = make_client(gh)
    yield github
    github.close()


@pytest.fixture
def repo(client: Github, shas: list[str]) -> Repository:
    return client.get_repo(REPO)


def wait_completed(repo: Repository, run_id: int) -> WorkflowRun:
    """Poll the run until it is completed (5 s at most)."""
    deadline = time.monotonic() + 5
    while True:
        run = repo.get_workflow_run(run_id)
        if run.status == "completed" or time.monotonic() > deadline:
            return run
        time.sleep(0.01)


# --- commits ---


def test_add_commit_is_deterministic_and_chains_parents(gh: GitHubStandIn, shas: list[str]) -> None:
    other = GitHubStandIn(token=TOKEN)
    other.add_repository(REPO)
    assert [other.add_commit(REPO, f"commit {n}") for n in range(5)] == shas
    assert all(len(sha) == 40 and int(sha, 16) >= 0 for sha in shas)


def test_get_commit_by_full_sha_short_sha_and_branch(repo: Repository, shas: list[str]) -> None:
    full = repo.get_commit(shas[2])
    assert full.sha == shas[2]
    assert full.commit.message == "commit 2"
    assert [p.sha for p in full.parents] == [shas[1]]
    assert repo.get_commit(shas[2][:7]).sha == shas[2]
    assert repo.get_commit("main").sha == shas[-1]
    # Commit dates grow with the history.
    assert repo.get_commit(shas[1]).commit.author.date < full.commit.author.date


def test_unknown_sha_raises_unknown_object(repo: Repository) -> None:
    with pytest.raises(UnknownObjectException) as raised:
        repo.get_commit("0123456789abcdef0123456789abcdef01234567")
    assert raised.value.status == 404


def test_ambiguous_short_sha_is_422(gh: GitHubStandIn, client: Github) -> None:
    # These two root commits of this repository have shas starting with the same 7 hex digits (01ab98e).
    gh.add_repository("acme/collide")
    first = gh.add_commit("acme/collide", "collide 2189", parents=[])
    second = gh.add_commit("acme/collide", "collide 6959", parents=[])
    assert first[:7] == second[:7] and first != second
    repo = client.get_repo("acme/collide")
    with pytest.raises(GithubException) as raised:
        repo.get_commit(first[:7])
    assert raised.value.status == 422
    assert raised.value.data["message"] == f"No commit found for SHA: {first[:7]}"
    assert repo.get_commit(first[:8]).sha == first


def test_get_commits_walks_first_parents_newest_first(gh: GitHubStandIn, repo: Repository, shas: list[str]) -> None:
    gh.add_commit(REPO, "feature work", branch="feature")
    assert [c.sha for c in repo.get_commits(sha="main")] == shas[::-1]
    assert [c.commit.message for c in repo.get_commits(sha=shas[2])] == ["commit 2", "commit 1", "commit 0"]
    assert repo.get_commits(sha="feature")[0].commit.message == "feature work"


def test_get_commits_paginates_with_link_headers(gh: GitHubStandIn, shas: list[str]) -> None:
    small_pages = make_client(gh, per_page=2)
    try:
        commits = small_pages.get_repo(REPO).get_commits(sha="main")
        assert [c.sha for c in commits] == shas[::-1]
        assert commits.totalCount == 5
    finally:
        small_pages.close()
    pages = [r.path for r in gh.requests if "/commits?" in r.path]
    assert any("page=3" in path for path in pages)


def test_compare_statuses(gh: GitHubStandIn, repo: Repository, shas: list[str]) -> None:
    ahead = repo.compare(shas[1], shas[4])
    assert (ahead.status, ahead.ahead_by, ahead.behind_by, ahead.total_commits) == ("ahead", 3, 0, 3)
    assert [c.sha for c in ahead.commits] == shas[2:]
    assert ahead.merge_base_commit.sha == shas[1]
    behind = repo.compare("main", shas[3])
    assert (behind.status, behind.ahead_by, behind.behind_by) == ("behind", 0, 1)
    assert repo.compare(shas[2], shas[2]).status == "identical"
    hotfix = gh.add_commit(REPO, "hotfix", branch="hotfix", parents=[shas[2]])
    diverged = repo.compare("main", "hotfix")
    assert (diverged.status, diverged.ahead_by, diverged.behind_by) == ("diverged", 1, 2)
    assert diverged.merge_base_commit.sha == shas[2]
    assert [c.sha for c in diverged.commits] == [hotfix]


def test_get_branch(repo: Repository, shas: list[str]) -> None:
    branch = repo.get_branch("main")
    assert branch.name == "main"
    assert branch.commit.sha == shas[-1]
    assert branch.protected is False
    with pytest.raises(UnknownObjectException):
        repo.get_branch("nope")


# --- deployments ---


def test_deployments_create_list_and_filter(gh: GitHubStandIn, repo: Repository, shas: list[str]) -> None:
    staging = gh.add_deployment(REPO, shas[0], "staging")
    created = repo.create_deployment(ref=shas[3], environment="production", description="rollback")
    assert created.sha == shas[3]
    assert created.environment == "production"
    assert created.production_environment is True
    from_branch = repo.create_deployment(ref="main", environment="production", auto_merge=False)
    assert from_branch.sha == shas[4]
    assert from_branch.ref == "main"
    assert [d.id for d in repo.get_deployments()] == [from_branch.id, created.id, staging]
    assert [d.id for d in repo.get_deployments(environment="production")] == [from_branch.id, created.id]
    assert [d.id for d in repo.get_deployments(sha=shas[0])] == [staging]
    assert repo.get_deployment(created.id).description == "rollback"
    with pytest.raises(GithubException) as raised:
        repo.create_deployment(ref="no-such-branch")
    assert raised.value.status == 422


def test_statuses_newest_first_and_auto_inactive(gh: GitHubStandIn, repo: Repository, shas: list[str]) -> None:
    old = gh.add_deployment(REPO, shas[3], "production", state="success")
    staging = gh.add_deployment(REPO, shas[3], "staging", state="success")
    new = repo.create_deployment(ref=shas[2], environment="production")
    status = new.create_status("in_progress", description="rolling back")
    assert status.state == "in_progress"
    assert gh.deployments(REPO, "production")[1]["state"] == "success"  # not yet: in_progress is not success
    new.create_status("success", description="done", environment_url="http://127.0.0.1/app")
    assert [s.state for s in new.get_statuses()] == ["success", "in_progress"]
    assert [s.state for s in repo.get_deployment(old).get_statuses()] == ["inactive", "success"]
    # Another environment is left alone.
    assert [s.state for s in repo.get_deployment(staging).get_statuses()] == ["success"]
    production = gh.deployments(REPO, environment="production")
    assert [(d["id"], d["state"]) for d in production] == [(new.id, "success"), (old, "inactive")]


def test_auto_inactive_false_keeps_earlier_success(gh: GitHubStandIn, repo: Repository, shas: list[str]) -> None:
    old = gh.add_deployment(REPO, shas[3], "production")
    new = repo.create_deployment(ref=shas[2], environment="production")
    new.create_status("success", auto_inactive=False)
    assert [d["state"] for d in gh.deployments(REPO, "production")] == ["success", "success"]
    assert repo.get_deployment(old).get_statuses()[0].state == "success"


def test_invalid_status_state_is_422(repo: Repository, shas: list[str]) -> None:
    deployment = repo.create_deployment(ref=shas[0], environment="production")
    with pytest.raises(GithubException) as raised:
        deployment.create_status("exploded")
    assert raised.value.status == 422


# --- workflows ---


def test_get_workflow_by_file_name_and_id(repo: Repository) -> None:
    workflow = repo.get_workflow("rollback-production.yml")
    assert workflow.name == "rollback-production"
    assert workflow.path == ".github/workflows/rollback-production.yml"
    assert repo.get_workflow(workflow.id).id == workflow.id
    assert [w.name for w in repo.get_workflows()] == ["rollback-production"]
    with pytest.raises(UnknownObjectException):
        repo.get_workflow("nope.yml").name  # noqa: B018 - the lazy object is completed on first access


def test_dispatch_returns_run_that_completes(
    gh: GitHubStandIn, repo: Repository, shas: list[str], deployer: Deployer
) -> None:
    workflow = repo.get_workflow("rollback-production.yml")
    deployer.gate.clear()
    run = workflow.create_dispatch(ref="main", inputs={"sha": shas[2]}, return_run_details=True)
    assert isinstance(run, WorkflowRun)
    assert run.html_url.endswith(f"/{REPO}/actions/runs/{run.id}")
    seen = [repo.get_workflow_run(run.id).status]
    while seen[-1] != "in_progress" and len(seen) < 500:
        time.sleep(0.01)
        seen.append(repo.get_workflow_run(run.id).status)
    # queued first (if the first poll was quick enough to see it), then in_progress while the deploy runs.
    assert set(seen[:-1]) <= {"queued"} and seen[-1] == "in_progress"
    assert repo.get_workflow_run(run.id).conclusion is None
    deployer.gate.set()
    done = wait_completed(repo, run.id)
    assert (done.status, done.conclusion) == ("completed", "success")
    assert done.head_sha == shas[-1]
    assert done.head_branch == "main"
    assert done.event == "workflow_dispatch"
    assert deployer.calls == [WorkflowRunRequest(REPO, "main", {"sha": shas[2]}, run.id, shas[-1])]
    assert [r.id for r in workflow.get_runs()] == [run.id]
    assert len(gh.dispatches()) == 1
    assert gh.dispatches()[0].body == {"ref": "main", "inputs": {"sha": shas[2]}, "return_run_details": True}
    assert gh.workflow_runs(REPO)[0]["conclusion"] == "success"


def test_dispatch_conclusion_comes_from_the_callback(repo: Repository, shas: list[str], deployer: Deployer) -> None:
    workflow = repo.get_workflow("rollback-production.yml")
    deployer.conclusion = "failure"
    failed = workflow.create_dispatch(ref="main", inputs={"sha": shas[0]}, return_run_details=True)
    assert wait_completed(repo, failed.id).conclusion == "failure"
    deployer.conclusion = "raise"
    crashed = workflow.create_dispatch(ref="main", inputs={"sha": shas[0]}, return_run_details=True)
    assert wait_completed(repo, crashed.id).conclusion == "failure"


def test_dispatch_without_run_details_is_204(gh: GitHubStandIn, repo: Repository, shas: list[str]) -> None:
    workflow = repo.get_workflow("rollback-production.yml")
    assert workflow.create_dispatch(ref="main", inputs={"sha": shas[1]}) is True
    assert gh.requests[-1].status == 204


def test_dispatch_missing_input_is_422(gh: GitHubStandIn, repo: Repository, deployer: Deployer) -> None:
    workflow = repo.get_workflow("rollback-production.yml")
    with pytest.raises(GithubException) as raised:
        workflow.create_dispatch(ref="main", inputs={}, return_run_details=True, throw=True)
    assert raised.value.status == 422
    assert raised.value.data["message"] == "Required input 'sha' not provided"
    # Without throw=True, PyGithub 2.10 swallows the error and returns False.
    # (its overloads promise a WorkflowRun for return_run_details=True, hence the `object`).
    swallowed: object = workflow.create_dispatch(ref="main", inputs={}, return_run_details=True)
    assert swallowed is False
    assert gh.workflow_runs(REPO) == []
    assert deployer.calls == []


def test_dispatch_unknown_ref_is_422(repo: Repository, shas: list[str]) -> None:
    workflow = repo.get_workflow("rollback-production.yml")
    with pytest.raises(GithubException) as raised:
        workflow.create_dispatch(ref="nope", inputs={"sha": shas[0]}, throw=True)
    assert raised.value.status == 422
    assert raised.value.data["message"] == "No ref found for: nope"


# --- errors and introspection ---


def test_bad_token_raises_bad_credentials(gh: GitHubStandIn) -> None:
    wrong = make_client(gh, token="wrong")
    try:
        with pytest.raises(BadCredentialsException):
            wrong.get_repo(REPO)
    finally:
        wrong.close()
    assert gh.requests[-1].status == 401


def test_unknown_repository_is_404(client: Github) -> None:
    with pytest.raises(UnknownObjectException):
        client.get_repo("acme/nope")


def test_down_answers_503(gh: GitHubStandIn, shas: list[str]) -> None:
    no_retry = make_client(gh, retry=None)
    try:
        gh.set_down(True)
        with pytest.raises(GithubException) as raised:
            no_retry.get_repo(REPO)
        assert raised.value.status == 503
        assert raised.value.data == {"message": "Service Unavailable"}
        gh.set_down(False)
        assert no_retry.get_repo(REPO).full_name == REPO
    finally:
        no_retry.close()


def test_requests_are_recorded(gh: GitHubStandIn, repo: Repository, shas: list[str]) -> None:
    repo.get_commit(shas[0])
    repo.create_deployment(ref=shas[0], environment="production")
    assert [r.method for r in gh.mutating_requests()] == ["POST"]
    assert gh.mutating_requests()[0].path == f"/repos/{REPO}/deployments"
    assert gh.mutating_requests()[0].body is not None
    assert gh.mutating_requests()[0].body["ref"] == shas[0]
    assert gh.requests[0].path == f"/repos/{REPO}"
    assert gh.dispatches() == []


def test_base_url_needs_a_started_server() -> None:
    standin = GitHubStandIn(token=TOKEN)
    with pytest.raises(RuntimeError):
        _ = standin.base_url
    with standin:
        assert standin.base_url.startswith("http://127.0.0.1:")
    with pytest.raises(RuntimeError):
        _ = standin.base_url


# --- what the exactly-once tests lean on: faults after GitHub acted, run-names, listing by creation time ---


@pytest.fixture
def named_workflow(gh: GitHubStandIn, shas: list[str]) -> int:
    return gh.add_workflow(
        REPO,
        path=".github/workflows/named.yml",
        name="named",
        inputs=("sha", "rollback_id"),
        run_name="rollback ${{ inputs.sha }} ${{ inputs.rollback_id }}",
    )


def test_a_502_after_acceptance_still_creates_the_run(gh: GitHubStandIn, named_workflow: int) -> None:
    gh.fail_dispatches = ["accept-then-502"]
    workflow = make_client(gh, retry=None).get_repo(REPO).get_workflow(named_workflow)
    with pytest.raises(GithubException) as refused:
        workflow.create_dispatch("main", {"sha": "abc1234", "rollback_id": "rb-1"}, throw=True)
    assert refused.value.status == 502
    (run,) = gh.workflow_runs(REPO)
    assert run["display_title"] == "rollback abc1234 rb-1"
    # The run is listed, and found by its run-name in the workflow-runs API.
    since = time.strftime(">=%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    listed = list(workflow.get_runs(event="workflow_dispatch", created=since))
    assert [r.display_title for r in listed] == ["rollback abc1234 rb-1"]
    later = time.strftime(">=%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert list(workflow.get_runs(created=later)) == []


def test_a_reset_after_acceptance_and_a_refusal_before_it(gh: GitHubStandIn, named_workflow: int) -> None:
    gh.fail_dispatches = ["accept-then-reset", "refuse-502"]
    workflow = make_client(gh, retry=None).get_repo(REPO).get_workflow(named_workflow)
    with pytest.raises(OSError):  # requests' ConnectionError: no answer at all
        workflow.create_dispatch("main", {"sha": "abc1234", "rollback_id": "rb-2"}, throw=True)
    with pytest.raises(GithubException) as refused:
        workflow.create_dispatch("main", {"sha": "abc1234", "rollback_id": "rb-3"}, throw=True)
    assert refused.value.status == 502
    assert [r["display_title"] for r in gh.workflow_runs(REPO)] == ["rollback abc1234 rb-2"]


def test_unexpected_inputs_are_refused_as_github_does(client: Github, named_workflow: int) -> None:
    workflow = client.get_repo(REPO).get_workflow(named_workflow)
    with pytest.raises(GithubException) as refused:
        workflow.create_dispatch("main", {"sha": "abc1234", "digest": "sha256:00"}, throw=True)
    assert refused.value.status == 422 and 'Unexpected inputs provided: ["digest"]' in str(refused.value.data)


def test_an_unreadable_run_status(gh: GitHubStandIn, named_workflow: int) -> None:
    repo = make_client(gh, retry=None).get_repo(REPO)
    run = repo.get_workflow(named_workflow).create_dispatch(
        "main", {"sha": "abc1234"}, throw=True, return_run_details=True
    )
    assert isinstance(run, WorkflowRun)
    gh.set_runs_unreadable(True)
    with pytest.raises(GithubException) as unreadable:
        repo.get_workflow_run(run.id).status  # noqa: B018 -- the read is the test
    assert unreadable.value.status == 500
    gh.set_runs_unreadable(False)
    assert wait_completed(repo, run.id).conclusion == "success"


def test_latency_delays_every_request_and_counts_it(gh: GitHubStandIn, repo: Repository, shas: list[str]) -> None:
    assert gh.delayed_requests == 0  # the fixture's `repo` read was not delayed: no latency by default
    before = len(gh.requests)
    gh.latency_seconds = 0.15
    started = time.time()
    repo.get_commit(shas[0])
    repo.get_branch("main")
    assert time.time() - started >= 0.3
    assert gh.delayed_requests == 2
    # Recorded once handled: after the wait.
    recorded = gh.requests[before:]
    assert [r.method for r in recorded] == ["GET", "GET"]
    assert recorded[0].timestamp - started >= 0.15
    gh.latency_seconds = 0
    repo.get_commit(shas[1])
    assert gh.delayed_requests == 2
