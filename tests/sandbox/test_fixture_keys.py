"""Every body the stand-ins send has exactly the keys of the recorded payload it imitates."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sandbox.fixtures import keys_match, load_fixture
from sandbox.github_standin import GitHubStandIn
from sandbox.slack_standin import SlackStandIn

GH_TOKEN = "ghp_keys_token"
SLACK_TOKEN = "xoxb-keys-token"
REPO = "acme/shop"


# --- the checker itself ---


def test_keys_match_accepts_the_fixture_itself() -> None:
    for name in ("commit-get.json", "compare.json", "workflow-run-get.json", "deployments-list.json"):
        assert keys_match(load_fixture("github", name), load_fixture("github", name)) == []
    slack_ok = load_fixture("slack", "chat.postMessage.ok")  # ".json" may be left out
    assert keys_match(load_fixture("slack", "chat.postMessage.ok.json"), slack_ok) == []


def test_keys_match_reports_missing_extra_and_nested_differences() -> None:
    template = {"a": 1, "b": {"c": 2, "d": [{"e": 3}]}, "f": None}
    assert keys_match(template, {"a": 9, "b": {"c": 0, "d": [{"e": 1}, {"e": 2}]}, "f": None}) == []
    assert keys_match(template, {"b": {"c": 0, "d": []}, "f": None}) == ["$: missing key 'a'"]
    assert keys_match(template, {"a": 1, "b": {"c": 0, "d": [], "x": 1}, "f": 1}) == ["$.b: extra key 'x'"]
    assert keys_match(template, {"a": 1, "b": {"c": 0, "d": [{"e": 1}, {}]}, "f": 1}) == ["$.b.d[1]: missing key 'e'"]
    assert keys_match(template, {"a": {"z": 1}, "b": [], "f": 1}) == [
        "$.a: expected a scalar, got dict",
        "$.b: expected an object, got list",
    ]
    # A null where the template has an object is fine (GitHub sends null for absent objects).
    assert keys_match(template, {"a": 1, "b": None, "f": {"any": "thing"}}) == []


def test_keys_match_treats_payload_as_free_form() -> None:
    template = {"payload": {"test": True}, "other": {"test": True}}
    assert keys_match(template, {"payload": {"x": 1}, "other": {"test": False}}) == []
    assert keys_match(template, {"payload": {"x": 1}, "other": {"test": False}}, opaque=()) == [
        "$.payload: missing key 'test'",
        "$.payload: extra key 'x'",
    ]
    assert keys_match(template, {"other": {"test": False}}) == ["$: missing key 'payload'"]


# --- GitHub ---


@dataclass
class Seeded:
    """A started GitHubStandIn with a history, a deployment, a status and a finished run."""

    gh: GitHubStandIn
    http: httpx.Client
    shas: list[str]
    deployment: int
    run: int
    workflow: int


@pytest.fixture(scope="module")
def seeded() -> Iterator[Seeded]:
    with GitHubStandIn(token=GH_TOKEN, run_step_seconds=0.01) as gh:
        gh.add_repository(REPO)
        workflow = gh.add_workflow(REPO)
        shas = [gh.add_commit(REPO, f"commit {n}") for n in range(4)]
        gh.add_commit(REPO, "hotfix", branch="hotfix", parents=[shas[1]])
        deployment = gh.add_deployment(REPO, shas[2], "production")
        with httpx.Client(base_url=gh.base_url, headers={"Authorization": f"token {GH_TOKEN}"}) as http:
            dispatched = http.post(
                f"/repos/{REPO}/actions/workflows/rollback-production.yml/dispatches",
                json={"ref": "main", "inputs": {"sha": shas[2]}, "return_run_details": True},
            )
            run = dispatched.json()["workflow_run_id"]
            deadline = time.monotonic() + 5
            while gh.workflow_runs(REPO)[0]["status"] != "completed" and time.monotonic() < deadline:
                time.sleep(0.01)
            yield Seeded(gh, http, shas, deployment, run, workflow)


GITHUB_CASES: list[tuple[str, str, str, Any, int, str, tuple[str | int, ...]]] = [
    # (case, method, path, JSON body, status, fixture, part of the fixture)
    ("commit", "GET", "/repos/{repo}/commits/{sha}", None, 200, "commit-get.json", ()),
    ("commit by short sha", "GET", "/repos/{repo}/commits/{short}", None, 200, "commit-get.json", ()),
    ("commits list", "GET", "/repos/{repo}/commits?sha=main&per_page=2", None, 200, "commits-list.json", ()),
    ("compare ahead", "GET", "/repos/{repo}/compare/{first}...main", None, 200, "compare.json", ()),
    ("compare diverged", "GET", "/repos/{repo}/compare/main...hotfix", None, 200, "compare.json", ()),
    ("branch", "GET", "/repos/{repo}/branches/main", None, 200, "branch-get.json", ()),
    ("repository", "GET", "/repos/{repo}", None, 200, "workflow-run-get.json", ("repository",)),
    ("deployments list", "GET", "/repos/{repo}/deployments", None, 200, "deployments-list.json", ()),
    (
        "deployments filtered",
        "GET",
        "/repos/{repo}/deployments?environment=production",
        None,
        200,
        "deployments-list.json",
        (),
    ),
    (
        "deployment create",
        "POST",
        "/repos/{repo}/deployments",
        {"ref": "main", "environment": "staging", "payload": {"x": 1}},
        201,
        "deployment-create.json",
        (),
    ),
    (
        "deployment get",
        "GET",
        "/repos/{repo}/deployments/{deployment}",
        None,
        200,
        "deployment-create.json",
        (),
    ),
    (
        "statuses list",
        "GET",
        "/repos/{repo}/deployments/{deployment}/statuses",
        None,
        200,
        "deployment-statuses-list.json",
        (),
    ),
    (
        "status create",
        "POST",
        "/repos/{repo}/deployments/{deployment}/statuses",
        {"state": "success", "description": "ok", "environment_url": "http://x"},
        201,
        "deployment-status-create.json",
        (),
    ),
    (
        "workflow by file",
        "GET",
        "/repos/{repo}/actions/workflows/rollback-production.yml",
        None,
        200,
        "workflow-get.json",
        (),
    ),
    (
        "workflow by id",
        "GET",
        "/repos/{repo}/actions/workflows/{workflow}",
        None,
        200,
        "workflow-get.json",
        (),
    ),
    ("workflows list", "GET", "/repos/{repo}/actions/workflows", None, 200, "workflows-list.json", ()),
    (
        "workflow runs list",
        "GET",
        "/repos/{repo}/actions/workflows/{workflow}/runs",
        None,
        200,
        "workflow-runs-list.json",
        (),
    ),
    ("workflow run", "GET", "/repos/{repo}/actions/runs/{run}", None, 200, "workflow-run-get.json", ()),
    (
        "dispatch 200",
        "POST",
        "/repos/{repo}/actions/workflows/{workflow}/dispatches",
        {"ref": "main", "inputs": {"sha": "abc"}, "return_run_details": True},
        200,
        "workflow-dispatch-200-return-run-details.json",
        (),
    ),
    (
        "dispatch 422 missing input",
        "POST",
        "/repos/{repo}/actions/workflows/{workflow}/dispatches",
        {"ref": "main", "inputs": {}},
        422,
        "workflow-dispatch-422-missing-input.json",
        (),
    ),
    (
        "dispatch 422 unknown ref",
        "POST",
        "/repos/{repo}/actions/workflows/{workflow}/dispatches",
        {"ref": "nope", "inputs": {"sha": "abc"}},
        422,
        "workflow-dispatch-422-missing-input.json",
        (),
    ),
    ("commit 404", "GET", "/repos/{repo}/commits/{missing}", None, 404, "error-404-with-status.json", ()),
    ("repository 404", "GET", "/repos/acme/nope", None, 404, "error-404-with-status.json", ()),
    ("route 404", "GET", "/user/repos", None, 404, "error-404-with-status.json", ()),
    (
        "deployment 422",
        "POST",
        "/repos/{repo}/deployments",
        {"ref": "nope"},
        422,
        "error-404-with-status.json",
        (),
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fixture", "part"),
    [case[1:] for case in GITHUB_CASES],
    ids=[case[0] for case in GITHUB_CASES],
)
def test_github_bodies_match_fixtures(
    seeded: Seeded, method: str, path: str, body: Any, status: int, fixture: str, part: tuple[str | int, ...]
) -> None:
    url = path.format(
        repo=REPO,
        sha=seeded.shas[-1],
        short=seeded.shas[-1][:7],
        first=seeded.shas[0],
        missing="f" * 40,
        deployment=seeded.deployment,
        run=seeded.run,
        workflow=seeded.workflow,
    )
    response = seeded.http.request(method, url, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    template = load_fixture("github", fixture)
    for step in part:
        template = template[step]
    payload = response.json()
    assert keys_match(template, payload) == []
    if isinstance(payload, list):
        assert payload, "an empty list would prove nothing"
    if status < 400:
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-used"} <= set(
            response.headers
        )


def test_github_ambiguous_short_sha_and_401_bodies(seeded: Seeded) -> None:
    gh = seeded.gh
    gh.add_repository("acme/collide")
    first = gh.add_commit("acme/collide", "collide 2189", parents=[])
    gh.add_commit("acme/collide", "collide 6959", parents=[])
    ambiguous = seeded.http.get(f"/repos/acme/collide/commits/{first[:7]}")
    assert ambiguous.status_code == 422
    assert keys_match(load_fixture("github", "error-404-with-status.json"), ambiguous.json()) == []
    assert ambiguous.json()["status"] == "422"
    unauthorized = httpx.get(f"{gh.base_url}/repos/{REPO}", headers={"Authorization": "token nope"})
    assert unauthorized.status_code == 401
    assert unauthorized.json() == load_fixture("github", "error-401-bad-credentials.json")
    bearer = httpx.get(f"{gh.base_url}/repos/{REPO}", headers={"Authorization": f"Bearer {GH_TOKEN}"})
    assert bearer.status_code == 200


def test_github_list_pagination_link_header(seeded: Seeded) -> None:
    response = seeded.http.get(f"/repos/{REPO}/commits", params={"sha": "main", "per_page": 2})
    links = response.headers["link"]
    assert 'rel="next"' in links and 'rel="last"' in links
    assert f"<{seeded.gh.base_url}/repos/{REPO}/commits?" in links


def test_github_dispatch_204_has_no_body(seeded: Seeded) -> None:
    response = seeded.http.post(
        f"/repos/{REPO}/actions/workflows/{seeded.workflow}/dispatches",
        json={"ref": "main", "inputs": {"sha": "abc"}},
    )
    assert response.status_code == 204
    assert response.content == b""


def test_github_down_body(seeded: Seeded) -> None:
    seeded.gh.set_down(True)
    try:
        response = seeded.http.get(f"/repos/{REPO}")
    finally:
        seeded.gh.set_down(False)
    assert response.status_code == 503
    assert response.json() == {"message": "Service Unavailable"}


# --- Slack ---


@pytest.fixture(scope="module")
def slack() -> Iterator[tuple[SlackStandIn, httpx.Client]]:
    with (
        SlackStandIn(token=SLACK_TOKEN) as standin,
        httpx.Client(base_url=standin.base_url, headers={"Authorization": f"Bearer {SLACK_TOKEN}"}) as http,
    ):
        yield standin, http


def test_slack_post_and_update_bodies(slack: tuple[SlackStandIn, httpx.Client]) -> None:
    _, http = slack
    posted = http.post("chat.postMessage", json={"channel": "#incidents-prod", "text": "hi"})
    assert posted.status_code == 200
    assert keys_match(load_fixture("slack", "chat.postMessage.ok.json"), posted.json()) == []
    reply = http.post(
        "chat.postMessage", json={"channel": "C0INCIDENT1", "text": "r", "thread_ts": posted.json()["ts"]}
    )
    assert keys_match(load_fixture("slack", "chat.postMessage.ok.json"), reply.json()) == []
    updated = http.post("chat.update", json={"channel": "C0INCIDENT1", "ts": posted.json()["ts"], "text": "done"})
    assert keys_match(load_fixture("slack", "chat.update.ok.json"), updated.json()) == []


@pytest.mark.parametrize(
    ("method", "args", "headers", "error", "fixture"),
    [
        (
            "chat.postMessage",
            {"channel": "#x", "text": "t"},
            {},
            "channel_not_found",
            "error-channel_not_found",
        ),
        (
            "chat.postMessage",
            {"channel": "#incidents-prod", "text": "t"},
            {"Authorization": "Bearer bad"},
            "invalid_auth",
            "error-invalid_auth",
        ),
        (
            "chat.postMessage",
            {"channel": "#incidents-prod"},
            {},
            "no_text",
            "chat.postMessage.error-too_many_attachments",
        ),
        (
            "chat.update",
            {"channel": "C0INCIDENT1", "ts": "1.1", "text": "t"},
            {},
            "message_not_found",
            "chat.update.error-cant_update_message",
        ),
    ],
    ids=["channel_not_found", "invalid_auth", "no_text", "message_not_found"],
)
def test_slack_error_bodies(
    slack: tuple[SlackStandIn, httpx.Client],
    method: str,
    args: dict[str, str],
    headers: dict[str, str],
    error: str,
    fixture: str,
) -> None:
    _, http = slack
    response = http.post(method, json=args, headers=headers)
    assert response.status_code == 200  # Slack reports application errors with HTTP 200
    assert response.json()["error"] == error
    assert keys_match(load_fixture("slack", fixture), response.json()) == []


def test_slack_429_matches_recording(slack: tuple[SlackStandIn, httpx.Client]) -> None:
    standin, http = slack
    recorded = load_fixture("slack", "ratelimited-429.http.json")
    standin.rate_limit_next(1, retry_after=3)
    response = http.post("chat.postMessage", content=json.dumps({"channel": "#incidents-prod", "text": "t"}))
    assert response.status_code == recorded["status"]
    assert response.headers["Retry-After"] == "3"
    assert response.headers["Content-Type"] == recorded["headers"]["Content-Type"]
    assert response.json() == recorded["body"]
