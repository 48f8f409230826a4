"""A stateful stand-in for the slice of the GitHub REST API the rollback runbook uses, served on 127.0.0.1.

Every JSON body is a deep copy of a recorded fixture (`fixtures/github/*.json`) whose values are overwritten,
so the key shape always equals what api.github.com sent. It is driven by the real PyGithub client:

    with GitHubStandIn(token="t") as gh:
        gh.add_repository("acme/shop")
        sha = gh.add_commit("acme/shop", "first")
        client = Github(base_url=gh.base_url, auth=Auth.Token("t"))

Dispatched workflow runs advance queued -> in_progress -> completed on a background thread; the
`on_workflow_run` callback performs the sandbox "deployment" and decides the conclusion.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from sandbox.fixtures import load_fixture
from sandbox.threaded import HOST, ThreadedHTTPServer

log = logging.getLogger(__name__)

DEPLOYMENT_STATES = ("error", "failure", "inactive", "in_progress", "queued", "pending", "success")
_DOCS = "https://docs.github.com/rest"
# Commit dates start here and grow by one minute per commit, so histories are deterministic.
_COMMIT_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_DEV = ("sandbox-dev", 1001, "Sandbox Developer", "dev@sandbox.invalid")
_BOT = ("rollback-bot", 1002)


@dataclass(frozen=True)
class WorkflowRunRequest:
    """What a dispatched workflow run was asked to do; handed to `on_workflow_run`."""

    repository: str
    ref: str
    inputs: dict[str, Any]
    run_id: int
    head_sha: str = ""


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stand-in received (any outcome, including 401 and 503)."""

    method: str
    path: str
    body: Any
    timestamp: float
    status: int = 0


@dataclass
class _Commit:
    sha: str
    message: str
    parents: tuple[str, ...]
    date: datetime


@dataclass
class _Status:
    id: int
    state: str
    description: str
    environment: str
    target_url: str
    environment_url: str
    created_at: datetime


@dataclass
class _Deployment:
    id: int
    sha: str
    ref: str
    task: str
    environment: str
    description: str | None
    payload: Any
    transient: bool
    production: bool
    created_at: datetime
    statuses: list[_Status] = field(default_factory=list)  # oldest first


@dataclass
class _Workflow:
    id: int
    name: str
    path: str
    required_inputs: tuple[str, ...]
    created_at: datetime
    inputs: tuple[str, ...] | None = None  # every declared input; None: accept any
    run_name: str | None = None  # the workflow's `run-name:` expression, rendered into display_title


@dataclass
class _Run:
    id: int
    workflow: _Workflow
    ref: str
    head_sha: str
    inputs: dict[str, Any]
    run_number: int
    created_at: datetime
    updated_at: datetime
    display_title: str = ""
    status: str = "queued"
    conclusion: str | None = None


@dataclass
class _Repo:
    id: int
    full_name: str
    default_branch: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    deployments: list[_Deployment] = field(default_factory=list)  # oldest first
    workflows: list[_Workflow] = field(default_factory=list)
    runs: list[_Run] = field(default_factory=list)  # oldest first


class _ApiError(Exception):
    """An HTTP error answer; raised inside a route handler, turned into the response by the dispatcher."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class _Call:
    """One routed API call: the repository, the path parameters, the query and the JSON body."""

    repo: _Repo
    params: dict[str, str]
    query: dict[str, str]
    body: Any


Result = tuple[int, Any, dict[str, str]]
_Route = Callable[[_Call], Result]


@functools.cache
def _fixture(name: str) -> Any:
    return load_fixture("github", name)


def _template(name: str, *path: str | int) -> Any:
    """A fresh deep copy of a fixture, or of a part of it (`path` indexes into it)."""
    value = _fixture(name)
    for step in path:
        value = value[step]
    return copy.deepcopy(value)


def _put(obj: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Overwrite keys the template already has; a key it lacks is a bug, because it would change the shape."""
    for key, value in values.items():
        if key not in obj:
            raise KeyError(f"template has no key {key!r}")
        obj[key] = value
    return obj


def _put_present(obj: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Overwrite only the keys this template happens to have (recordings differ in optional keys)."""
    for key, value in values.items():
        if key in obj:
            obj[key] = value
    return obj


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _error(status: int, message: str) -> _ApiError:
    """A modern error body, with the key set of `error-404-with-status.json`."""
    return _ApiError(
        status,
        _put(
            _template("error-404-with-status.json"),
            message=message,
            documentation_url=_DOCS,
            status=str(status),
        ),
    )


def _dispatch_error(message: str) -> _ApiError:
    """A 422 from the dispatch endpoint: the key set of `workflow-dispatch-422-missing-input.json`."""
    body = _template("workflow-dispatch-422-missing-input.json")
    url = "https://docs.github.com/rest/actions/workflows#create-a-workflow-dispatch-event"
    return _ApiError(422, _put(body, message=message, documentation_url=url))


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _truthy(value: Any, default: bool) -> bool:
    return default if value is None else bool(value)


def _created_matches(spec: str | None, created: datetime) -> bool:
    """GitHub's `created` filter, in the forms the runbook uses: `>=DATE`, `>DATE`, `<=DATE`, `DATE..DATE`."""
    if not spec:
        return True

    def moment(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    if ".." in spec:
        low, _, high = spec.partition("..")
        return moment(low) <= created <= moment(high)
    for op, test in ((">=", created.__ge__), ("<=", created.__le__), (">", created.__gt__), ("<", created.__lt__)):
        if spec.startswith(op):
            return bool(test(moment(spec[len(op) :])))
    return created.date() == moment(spec).date()


def render_run_name(run_name: str, inputs: dict[str, Any]) -> str:
    """A workflow's `run-name` with its `${{ inputs.X }}` expressions replaced, as GitHub shows it."""
    return re.sub(r"\$\{\{\s*inputs\.(\w+)\s*\}\}", lambda m: str(inputs.get(m.group(1), "")), run_name)


#: Ways a dispatch can go wrong on the wire (`GitHubStandIn.fail_dispatches`):
#: "accept-then-502": the run is created, the answer is a 502 (a proxy lost GitHub's answer);
#: "accept-then-reset": the run is created, the connection is reset before any answer;
#: "accept-then-slow": the run is created, the answer comes after `slow_answer_seconds` (past the client's timeout);
#: "refuse-502": a 502 and no run created (GitHub never got it).
DISPATCH_FAULTS = ("accept-then-502", "accept-then-reset", "accept-then-slow", "refuse-502")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, standin: GitHubStandIn) -> None:
        super().__init__((HOST, 0), _Handler)
        self.standin = standin

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection reset on purpose (a fault) is not worth a traceback."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        self.server.standin._answer(self)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and the demo print what matters themselves."""


class GitHubStandIn(ThreadedHTTPServer):
    """A local, stateful GitHub API: repositories, commits, deployments and workflow dispatches."""

    _thread_name = "github-standin"

    def __init__(
        self,
        *,
        token: str,
        run_step_seconds: float = 0.2,
        on_workflow_run: Callable[[WorkflowRunRequest], str] | None = None,
    ) -> None:
        super().__init__()
        self._token = token
        self.run_step_seconds = run_step_seconds  # public: tests slow a run down
        self._on_workflow_run = on_workflow_run
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._ids = itertools.count(1_000_001)
        self._down = False
        self._runs_unreadable = False
        self._failing: int | None = None
        self.fail_dispatches: list[str] = []  # public: tests queue DISPATCH_FAULTS, one per dispatch, in order
        self.slow_answer_seconds = 3.0
        self.latency_seconds = 0.0  # public: every request waits this long before it is handled (benchmarks)
        self._delayed = 0
        self._used = 0
        self._reset = int(time.time()) + 3600
        self._requests: list[RecordedRequest] = []
        self._run_threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        repo = r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
        table: list[tuple[str, str, _Route]] = [
            ("GET", r"$", self._get_repo),
            ("GET", r"/commits$", self._list_commits),
            ("GET", r"/commits/(?P<ref>.+)$", self._get_commit),
            ("GET", r"/compare/(?P<basehead>.+)$", self._compare),
            ("GET", r"/branches/(?P<branch>.+)$", self._get_branch),
            ("GET", r"/deployments$", self._list_deployments),
            ("POST", r"/deployments$", self._create_deployment),
            ("GET", r"/deployments/(?P<id>\d+)$", self._get_deployment),
            ("GET", r"/deployments/(?P<id>\d+)/statuses$", self._list_statuses),
            ("POST", r"/deployments/(?P<id>\d+)/statuses$", self._create_status),
            ("GET", r"/deployments/(?P<id>\d+)/statuses/(?P<status_id>\d+)$", self._get_status),
            ("GET", r"/actions/workflows$", self._list_workflows),
            ("GET", r"/actions/workflows/(?P<workflow>[^/]+)$", self._get_workflow),
            ("POST", r"/actions/workflows/(?P<workflow>[^/]+)/dispatches$", self._dispatch),
            ("GET", r"/actions/workflows/(?P<workflow>[^/]+)/runs$", self._list_runs),
            ("GET", r"/actions/runs/(?P<run_id>\d+)$", self._get_run),
        ]
        self._routes = [(method, re.compile(repo + suffix), handler) for method, suffix, handler in table]

    # --- lifecycle ---

    def start(self) -> Self:
        """Start serving on an OS-chosen port; returns self."""
        if not self.running:
            self._stopping.clear()
        return super().start()

    def stop(self) -> None:
        """Stop serving, stop advancing workflow runs and close the listening socket."""
        self._stopping.set()
        super().stop()
        for thread in self._run_threads:
            # A run thread may be inside the deploy callback; do not hang the caller on it forever.
            thread.join(timeout=5)
        self._run_threads.clear()

    def _make_server(self) -> _Server:
        return _Server(self)

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`, what `Github(base_url=...)` expects; RuntimeError unless started."""
        return self.url

    def set_down(self, down: bool) -> None:
        """While down, every request gets HTTP 503 (PyGithub retries 5xx unless `Github(retry=None)`)."""
        with self._lock:
            self._down = down

    @property
    def delayed_requests(self) -> int:
        """How many requests waited `latency_seconds` (> 0) before they were handled."""
        with self._lock:
            return self._delayed

    def set_failing(self, status: int | None) -> None:
        """While set, every request gets this HTTP status (500: GitHub failing); None answers again."""
        with self._lock:
            self._failing = status

    def set_runs_unreadable(self, unreadable: bool) -> None:
        """While set, reading one workflow run (`GET .../actions/runs/{id}`) answers HTTP 500; runs go on."""
        with self._lock:
            self._runs_unreadable = unreadable

    # --- seeding ---

    def add_repository(self, full_name: str, default_branch: str = "main") -> None:
        """Create an empty repository (no commits yet; the default branch appears with the first commit)."""
        with self._lock:
            if full_name.lower() in self._repos:
                raise ValueError(f"repository {full_name} already exists")
            self._repos[full_name.lower()] = _Repo(next(self._ids), full_name, default_branch)

    def add_commit(
        self, full_name: str, message: str, *, branch: str = "main", parents: list[str] | None = None
    ) -> str:
        """Append a commit to `branch` and return its sha (sha1 of repository, message and parents).

        Without `parents` the parent is the branch head; a new branch starts from the default branch head;
        `parents=[]` makes a root commit. Commit dates grow by one minute per commit of the repository.
        """
        with self._lock:
            repo = self._repo_or_key_error(full_name)
            if parents is None:
                head = repo.branches.get(branch) or repo.branches.get(repo.default_branch)
                parents = [head] if head else []
            for parent in parents:
                if parent not in repo.commits:
                    raise ValueError(f"unknown parent commit {parent}")
            seed = f"{repo.full_name}\n{message}\n{' '.join(parents)}"
            sha = hashlib.sha1(seed.encode()).hexdigest()
            if sha in repo.commits:
                raise ValueError(f"commit {sha} already exists (same message and parents)")
            date = _COMMIT_EPOCH + timedelta(minutes=len(repo.commits))
            repo.commits[sha] = _Commit(sha, message, tuple(parents), date)
            repo.branches[branch] = sha
            return sha

    def add_deployment(
        self,
        full_name: str,
        sha: str,
        environment: str,
        *,
        state: str = "success",
        description: str = "",
        states: tuple[str, ...] | None = None,
    ) -> int:
        """Record a deployment of `sha` with one status `state` (auto-inactivating as GitHub does); its id.

        `states` (oldest first, e.g. `("in_progress", "failure")`) gives it several statuses instead; `()`
        none at all.
        """
        with self._lock:
            repo = self._repo_or_key_error(full_name)
            resolved = self._find_commit(repo, sha)
            if resolved is None:
                raise ValueError(f"unknown commit {sha}")
            deployment = self._new_deployment(
                repo,
                resolved,
                sha,
                "deploy",
                environment,
                description,
                {},
                False,
                environment == "production",
            )
            for each in (state,) if states is None else states:
                self._add_status(repo, deployment, each, description, environment, "", "", auto_inactive=True)
            return deployment.id

    def add_workflow(
        self,
        full_name: str,
        path: str = ".github/workflows/rollback-production.yml",
        name: str = "rollback-production",
        required_inputs: tuple[str, ...] = ("sha",),
        *,
        inputs: tuple[str, ...] | None = None,
        run_name: str | None = None,
    ) -> int:
        """Register a workflow with a `workflow_dispatch` trigger; its id.

        `inputs` declares every input (GitHub refuses a dispatch with others; None accepts any); `run_name`
        is the workflow's `run-name:` expression, shown as each run's `display_title`.
        """
        with self._lock:
            repo = self._repo_or_key_error(full_name)
            workflow = _Workflow(
                next(self._ids), name, path, tuple(required_inputs), _now(), tuple(inputs) if inputs else None, run_name
            )
            repo.workflows.append(workflow)
            return workflow.id

    # --- introspection ---

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def mutating_requests(self) -> list[RecordedRequest]:
        """The requests that could have changed something (every method but GET)."""
        return [r for r in self.requests if r.method != "GET"]

    def dispatches(self) -> list[RecordedRequest]:
        """The workflow dispatch requests (whatever their outcome)."""
        return [r for r in self.requests if r.method == "POST" and r.path.split("?")[0].endswith("/dispatches")]

    def deployments(self, full_name: str, environment: str | None = None) -> list[dict[str, Any]]:
        """Deployments as plain dicts, newest first, each with `statuses` (newest first) and `state`."""
        with self._lock:
            repo = self._repo_or_key_error(full_name)
            return [
                {
                    "id": d.id,
                    "sha": d.sha,
                    "ref": d.ref,
                    "task": d.task,
                    "environment": d.environment,
                    "description": d.description,
                    "created_at": _iso(d.created_at),
                    "state": d.statuses[-1].state if d.statuses else None,
                    "statuses": [
                        {
                            "id": s.id,
                            "state": s.state,
                            "description": s.description,
                            "environment": s.environment,
                            "log_url": s.target_url,
                        }
                        for s in reversed(d.statuses)
                    ],
                }
                for d in reversed(repo.deployments)
                if environment is None or d.environment == environment
            ]

    def workflow_runs(self, full_name: str) -> list[dict[str, Any]]:
        """Workflow runs as plain dicts, newest first (id, status, conclusion, ref, head_sha, inputs)."""
        with self._lock:
            repo = self._repo_or_key_error(full_name)
            return [
                {
                    "id": r.id,
                    "workflow": r.workflow.path,
                    "status": r.status,
                    "conclusion": r.conclusion,
                    "ref": r.ref,
                    "head_sha": r.head_sha,
                    "inputs": dict(r.inputs),
                    "display_title": r.display_title,
                }
                for r in reversed(repo.runs)
            ]

    # --- HTTP plumbing ---

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer one request: wait the latency, read it, dispatch it, record it, write the response."""
        self._delay()
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body: Any = None
        try:
            body = json.loads(raw) if raw else None
            authorization = handler.headers.get("Authorization") or ""
            status, payload, headers = self._respond(handler.command, handler.path, authorization, body)
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
            status, payload, headers = 400, {"message": "Problems parsing JSON"}, {}
        except Exception:
            # A bug in the stand-in must surface as a clear 500, not as a dropped connection.
            log.exception("GitHubStandIn failed on %s %s", handler.command, handler.path)
            status, payload, headers = 500, {"message": "Server Error"}, {}
        fault = self._fault_for(handler.command, handler.path, status)
        if fault == "accept-then-502":
            status, payload, headers = 502, {"message": "Server Error"}, {}
        with self._lock:
            self._requests.append(RecordedRequest(handler.command, handler.path, body, time.time(), status))
        if fault == "accept-then-reset":
            # SO_LINGER 0: close() sends a TCP reset, as a dropped connection does.
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()
            handler.close_connection = True
            return
        if fault == "accept-then-slow" and self._stopping.wait(self.slow_answer_seconds):
            return
        data = b"" if payload is None else json.dumps(payload).encode()
        handler.send_response(status)
        if payload is not None:
            handler.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _delay(self) -> None:
        """Wait `latency_seconds` (a slow network or API), counted; a stop cuts the wait short."""
        latency = self.latency_seconds
        if latency <= 0:
            return
        with self._lock:
            self._delayed += 1
        self._stopping.wait(latency)

    def _fault_for(self, method: str, target: str, status: int) -> str | None:
        """The fault to play on this answer: the next queued one, for a dispatch GitHub accepted."""
        if method != "POST" or not urlsplit(target).path.endswith("/dispatches") or status >= 300:
            return None
        with self._lock:
            return self.fail_dispatches.pop(0) if self.fail_dispatches else None

    def _respond(self, method: str, target: str, authorization: str, body: Any) -> Result:
        with self._lock:
            if self._down:
                return 503, {"message": "Service Unavailable"}, {}
            if self._failing is not None:
                return self._failing, {"message": "Server Error"}, {}
            path = urlsplit(target).path
            if (
                method == "POST"
                and path.endswith("/dispatches")
                and self.fail_dispatches
                and self.fail_dispatches[0] == "refuse-502"
            ):
                self.fail_dispatches.pop(0)
                return 502, {"message": "Server Error"}, {}
            if self._runs_unreadable and method == "GET" and re.search(r"/actions/runs/\d+$", path):
                return 500, {"message": "Server Error"}, {}
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() not in ("token", "bearer") or credential.strip() != self._token:
                return 401, _template("error-401-bad-credentials.json"), {}
            self._used += 1
            rate = {
                "x-ratelimit-limit": "5000",
                "x-ratelimit-remaining": str(max(0, 5000 - self._used)),
                "x-ratelimit-reset": str(self._reset),
                "x-ratelimit-used": str(self._used),
                "x-ratelimit-resource": "core",
                "x-github-api-version-selected": "2022-11-28",
                "x-github-media-type": "github.v3; format=json",
                "x-github-request-id": f"SANDBOX:{self._used:08X}",
            }
            split = urlsplit(target)
            query = dict(parse_qsl(split.query))
            try:
                status, payload, extra = self._route(method, split.path, query, body)
            except _ApiError as error:
                status, payload, extra = error.status, error.body, {}
            return status, payload, {**rate, **extra}

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> Result:
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match and route_method == method:
                groups = {key: unquote(value) for key, value in match.groupdict().items()}
                repo = self._repos.get(f"{groups['owner']}/{groups['repo']}".lower())
                if repo is None:
                    raise _error(404, "Not Found")
                return handler(_Call(repo, groups, query, body))
        raise _error(404, "Not Found")

    # --- state helpers ---

    def _repo_or_key_error(self, full_name: str) -> _Repo:
        try:
            return self._repos[full_name.lower()]
        except KeyError:
            raise KeyError(f"unknown repository {full_name}; call add_repository first") from None

    def _find_commit(self, repo: _Repo, ref: str) -> str | None:
        """Full sha of a branch, full sha or unique short sha (>= 7); None if unknown, 422 if ambiguous."""
        ref = ref.removeprefix("refs/heads/")
        if ref in repo.branches:
            return repo.branches[ref]
        if ref in repo.commits:
            return ref
        if len(ref) >= 7 and re.fullmatch(r"[0-9a-f]+", ref):
            found = [sha for sha in repo.commits if sha.startswith(ref)]
            if len(found) > 1:
                raise _error(422, f"No commit found for SHA: {ref}")
            if found:
                return found[0]
        return None

    def _commit_or_404(self, repo: _Repo, ref: str) -> _Commit:
        sha = self._find_commit(repo, ref)
        if sha is None:
            # PyGithub maps a 404 to UnknownObjectException only when the message says "not found".
            raise _error(404, "Not Found")
        return repo.commits[sha]

    def _first_parent_history(self, repo: _Repo, sha: str) -> list[_Commit]:
        history = []
        current: str | None = sha
        while current is not None:
            commit = repo.commits[current]
            history.append(commit)
            current = commit.parents[0] if commit.parents else None
        return history

    def _ancestors(self, repo: _Repo, sha: str) -> set[str]:
        """The commit itself and every commit reachable through any parent."""
        seen: set[str] = set()
        todo = [sha]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(repo.commits[current].parents)
        return seen

    def _new_deployment(
        self,
        repo: _Repo,
        sha: str,
        ref: str,
        task: str,
        environment: str,
        description: str | None,
        payload: Any,
        transient: bool,
        production: bool,
    ) -> _Deployment:
        deployment = _Deployment(
            next(self._ids), sha, ref, task, environment, description, payload, transient, production, _now()
        )
        repo.deployments.append(deployment)
        return deployment

    def _add_status(
        self,
        repo: _Repo,
        deployment: _Deployment,
        state: str,
        description: str,
        environment: str,
        target_url: str,
        environment_url: str,
        *,
        auto_inactive: bool,
    ) -> _Status:
        if state not in DEPLOYMENT_STATES:
            raise _error(422, f"Validation Failed: state {state!r} is not one of {', '.join(DEPLOYMENT_STATES)}")
        # A status may move the deployment to another environment, as GitHub's `environment` parameter does.
        deployment.environment = environment
        status = _Status(next(self._ids), state, description, environment, target_url, environment_url, _now())
        deployment.statuses.append(status)
        if state == "success" and auto_inactive:
            # GitHub marks earlier successful deployments of the environment inactive: one live version.
            for other in repo.deployments:
                if (
                    other.id < deployment.id
                    and other.environment == environment
                    and other.statuses
                    and other.statuses[-1].state == "success"
                ):
                    other.statuses.append(_Status(next(self._ids), "inactive", "", environment, "", "", _now()))
        return status

    def _deployment_or_404(self, repo: _Repo, deployment_id: str) -> _Deployment:
        for deployment in repo.deployments:
            if deployment.id == int(deployment_id):
                return deployment
        raise _error(404, "Not Found")

    def _workflow_or_404(self, repo: _Repo, id_or_file: str) -> _Workflow:
        for workflow in repo.workflows:
            if str(workflow.id) == id_or_file or workflow.path.rsplit("/", 1)[-1] == id_or_file:
                return workflow
        raise _error(404, "Not Found")

    def _paginate(
        self, items: list[Any], path: str, query: dict[str, str], default_per_page: int = 30
    ) -> tuple[list[Any], dict[str, str]]:
        """One page of `items` and a GitHub-style `Link` header (next/last, first/prev) if there are more."""
        # GitHub caps per_page at 100 for lists; compare pages commits by up to 250.
        limit = max(default_per_page, 100)
        per_page = min(max(_int(query.get("per_page"), default_per_page), 1), limit)
        page = max(_int(query.get("page"), 1), 1)
        last = max((len(items) + per_page - 1) // per_page, 1)

        def link(number: int, rel: str) -> str:
            params = {**query, "per_page": str(per_page), "page": str(number)}
            return f'<{self.base_url}{path}?{urlencode(params)}>; rel="{rel}"'

        links = []
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        return items[(page - 1) * per_page : page * per_page], ({"Link": ", ".join(links)} if links else {})

    # --- JSON makers ---

    def _api(self, repo: _Repo) -> str:
        return f"{self.base_url}/repos/{repo.full_name}"

    def _web(self, repo: _Repo) -> str:
        # "html" URLs point at this server too (they 404), so nothing in a body leads to the real GitHub.
        return f"{self.base_url}/{repo.full_name}"

    def _user(self, template: dict[str, Any], login: str, user_id: int) -> dict[str, Any]:
        api = f"{self.base_url}/users/{login}"
        _put(template, login=login, id=user_id, node_id=f"U_sandbox{user_id}", site_admin=False, type="User")
        return _put_present(
            template,
            avatar_url=f"{self.base_url}/avatars/{login}",
            gravatar_id="",
            url=api,
            html_url=f"{self.base_url}/{login}",
            followers_url=f"{api}/followers",
            following_url=f"{api}/following{{/other_user}}",
            gists_url=f"{api}/gists{{/gist_id}}",
            starred_url=f"{api}/starred{{/owner}}{{/repo}}",
            subscriptions_url=f"{api}/subscriptions",
            organizations_url=f"{api}/orgs",
            repos_url=f"{api}/repos",
            events_url=f"{api}/events{{/privacy}}",
            received_events_url=f"{api}/received_events",
            user_view_type="public",
        )

    def _commit_json(self, repo: _Repo, commit: _Commit, template: dict[str, Any]) -> dict[str, Any]:
        api, web, sha = self._api(repo), self._web(repo), commit.sha
        tree = hashlib.sha1(f"tree {sha}".encode()).hexdigest()
        name, email, date = _DEV[2], _DEV[3], _iso(commit.date)
        inner = template["commit"]
        _put(inner["author"], name=name, email=email, date=date)
        _put(inner["committer"], name=name, email=email, date=date)
        _put(inner["tree"], sha=tree, url=f"{api}/git/trees/{tree}")
        _put(
            inner["verification"],
            verified=False,
            reason="unsigned",
            signature=None,
            payload=None,
            verified_at=None,
        )
        _put(inner, message=commit.message, url=f"{api}/git/commits/{sha}", comment_count=0)
        parent_template = template["parents"][0] if template["parents"] else {}
        _put(
            template,
            sha=sha,
            node_id=f"C_sandbox{sha[:12]}",
            url=f"{api}/commits/{sha}",
            html_url=f"{web}/commit/{sha}",
            comments_url=f"{api}/commits/{sha}/comments",
            author=self._user(template["author"], _DEV[0], _DEV[1]),
            committer=self._user(template["committer"], _DEV[0], _DEV[1]),
            parents=[
                _put(
                    copy.deepcopy(parent_template),
                    sha=p,
                    url=f"{api}/commits/{p}",
                    html_url=f"{web}/commit/{p}",
                )
                for p in commit.parents
            ],
        )
        if "stats" in template:
            _put(template["stats"], total=0, additions=0, deletions=0)
        if "files" in template:
            template["files"] = []  # the sandbox tracks no file contents
        return template

    def _repo_json(self, repo: _Repo, template: dict[str, Any]) -> dict[str, Any]:
        """A repository object on a run's `repository` template (no fixture holds a full repository)."""
        old_api, old_web = template["url"], template["html_url"]
        for key, value in template.items():
            if isinstance(value, str):
                template[key] = value.replace(old_api, self._api(repo)).replace(old_web, self._web(repo))
        owner = repo.full_name.split("/")[0]
        return _put(
            template,
            id=repo.id,
            node_id=f"R_sandbox{repo.id}",
            name=repo.full_name.split("/")[1],
            full_name=repo.full_name,
            private=True,
            owner=self._user(template["owner"], owner, repo.id + 1),
            description="sandbox repository",
            fork=False,
        )

    def _deployment_json(self, repo: _Repo, deployment: _Deployment, template: dict[str, Any]) -> dict[str, Any]:
        url = f"{self._api(repo)}/deployments/{deployment.id}"
        return _put(
            template,
            url=url,
            id=deployment.id,
            node_id=f"DE_sandbox{deployment.id}",
            sha=deployment.sha,
            ref=deployment.ref,
            task=deployment.task,
            payload=deployment.payload,
            original_environment=deployment.environment,
            environment=deployment.environment,
            description=deployment.description,
            creator=self._user(template["creator"], *_BOT),
            created_at=_iso(deployment.created_at),
            updated_at=_iso(deployment.statuses[-1].created_at if deployment.statuses else deployment.created_at),
            statuses_url=f"{url}/statuses",
            repository_url=self._api(repo),
            transient_environment=deployment.transient,
            production_environment=deployment.production,
            performed_via_github_app=None,
        )

    def _status_json(
        self, repo: _Repo, deployment: _Deployment, status: _Status, template: dict[str, Any]
    ) -> dict[str, Any]:
        deployment_url = f"{self._api(repo)}/deployments/{deployment.id}"
        _put(
            template,
            url=f"{deployment_url}/statuses/{status.id}",
            id=status.id,
            node_id=f"DES_sandbox{status.id}",
            state=status.state,
            creator=self._user(template["creator"], *_BOT),
            description=status.description,
            environment=status.environment,
            target_url=status.target_url,
            created_at=_iso(status.created_at),
            updated_at=_iso(status.created_at),
            deployment_url=deployment_url,
            repository_url=self._api(repo),
            performed_via_github_app=None,
        )
        return _put_present(template, environment_url=status.environment_url, log_url=status.target_url)

    def _workflow_json(self, repo: _Repo, workflow: _Workflow, template: dict[str, Any]) -> dict[str, Any]:
        return _put(
            template,
            id=workflow.id,
            node_id=f"W_sandbox{workflow.id}",
            name=workflow.name,
            path=workflow.path,
            state="active",
            created_at=_iso(workflow.created_at),
            updated_at=_iso(workflow.created_at),
            url=f"{self._api(repo)}/actions/workflows/{workflow.id}",
            html_url=f"{self._web(repo)}/blob/{repo.default_branch}/{workflow.path}",
            badge_url=f"{self._web(repo)}/workflows/{quote(workflow.name)}/badge.svg",
        )

    def _run_json(self, repo: _Repo, run: _Run, template: dict[str, Any]) -> dict[str, Any]:
        api, url = self._api(repo), f"{self._api(repo)}/actions/runs/{run.id}"
        commit = repo.commits[run.head_sha]
        _put(
            template["head_commit"],
            id=commit.sha,
            tree_id=hashlib.sha1(f"tree {commit.sha}".encode()).hexdigest(),
            message=commit.message,
            timestamp=_iso(commit.date),
        )
        for who in ("author", "committer"):
            _put(template["head_commit"][who], name=_DEV[2], email=_DEV[3])
        return _put(
            template,
            id=run.id,
            name=run.workflow.name,
            node_id=f"WFR_sandbox{run.id}",
            head_branch=run.ref,
            head_sha=run.head_sha,
            path=run.workflow.path,
            display_title=run.display_title,
            run_number=run.run_number,
            event="workflow_dispatch",
            status=run.status,
            conclusion=run.conclusion,
            workflow_id=run.workflow.id,
            check_suite_id=run.id + 1,
            check_suite_node_id=f"CS_sandbox{run.id + 1}",
            url=url,
            html_url=f"{self._web(repo)}/actions/runs/{run.id}",
            pull_requests=[],
            created_at=_iso(run.created_at),
            updated_at=_iso(run.updated_at),
            actor=self._user(template["actor"], *_BOT),
            run_attempt=1,
            referenced_workflows=[],
            run_started_at=_iso(run.created_at),
            triggering_actor=self._user(template["triggering_actor"], *_BOT),
            jobs_url=f"{url}/jobs",
            logs_url=f"{url}/logs",
            check_suite_url=f"{api}/check-suites/{run.id + 1}",
            artifacts_url=f"{url}/artifacts",
            cancel_url=f"{url}/cancel",
            rerun_url=f"{url}/rerun",
            previous_attempt_url=None,
            workflow_url=f"{api}/actions/workflows/{run.workflow.id}",
            repository=self._repo_json(repo, template["repository"]),
            head_repository=self._repo_json(repo, template["head_repository"]),
        )

    # --- routes ---

    def _get_repo(self, call: _Call) -> Result:
        return 200, self._repo_json(call.repo, _template("workflow-run-get.json", "repository")), {}

    def _get_commit(self, call: _Call) -> Result:
        commit = self._commit_or_404(call.repo, call.params["ref"])
        return 200, self._commit_json(call.repo, commit, _template("commit-get.json")), {}

    def _list_commits(self, call: _Call) -> Result:
        repo = call.repo
        if not repo.commits:
            raise _error(409, "Git Repository is empty.")
        head = self._commit_or_404(repo, call.query.get("sha") or repo.default_branch)
        history = self._first_parent_history(repo, head.sha)
        page, headers = self._paginate(history, f"/repos/{repo.full_name}/commits", call.query)
        return 200, [self._commit_json(repo, c, _template("commits-list.json", 0)) for c in page], headers

    def _compare(self, call: _Call) -> Result:
        repo = call.repo
        base_ref, dots, head_ref = call.params["basehead"].partition("...")
        if not dots:
            raise _error(404, "Not Found")
        base, head = self._commit_or_404(repo, base_ref), self._commit_or_404(repo, head_ref)
        base_side, head_side = self._ancestors(repo, base.sha), self._ancestors(repo, head.sha)
        common = base_side & head_side
        if not common:
            raise _error(404, f"No common ancestor between {base_ref} and {head_ref}.")
        # Commits are created after their parents, so the newest common commit is a merge base.
        merge_base = max((repo.commits[sha] for sha in common), key=lambda c: c.date)
        ahead = sorted((repo.commits[sha] for sha in head_side - base_side), key=lambda c: c.date)
        behind = len(base_side - head_side)
        if ahead and behind:
            status = "diverged"
        elif ahead:
            status = "ahead"
        else:
            status = "behind" if behind else "identical"
        spec = f"{base_ref}...{head_ref}"
        page, headers = self._paginate(
            ahead, f"/repos/{repo.full_name}/compare/{spec}", call.query, default_per_page=250
        )
        html, owner = f"{self._web(repo)}/compare/{spec}", repo.full_name.split("/")[0]
        body = _put(
            _template("compare.json"),
            url=f"{self._api(repo)}/compare/{spec}",
            html_url=html,
            permalink_url=f"{self._web(repo)}/compare/{owner}:{base.sha[:7]}...{owner}:{head.sha[:7]}",
            diff_url=f"{html}.diff",
            patch_url=f"{html}.patch",
            base_commit=self._commit_json(repo, base, _template("compare.json", "base_commit")),
            merge_base_commit=self._commit_json(repo, merge_base, _template("compare.json", "merge_base_commit")),
            status=status,
            ahead_by=len(ahead),
            behind_by=behind,
            total_commits=len(ahead),
            commits=[self._commit_json(repo, c, _template("compare.json", "commits", 0)) for c in page],
            files=[],
        )
        return 200, body, headers

    def _get_branch(self, call: _Call) -> Result:
        repo, name = call.repo, call.params["branch"]
        if name not in repo.branches:
            raise _error(404, "Branch not found")
        body: dict[str, Any] = _template("branch-get.json")
        url = f"{self._api(repo)}/branches/{name}"
        _put(body["_links"], self=url, html=f"{self._web(repo)}/tree/{name}")
        _put(body["protection"], enabled=False)
        _put(body["protection"]["required_status_checks"], enforcement_level="off", contexts=[], checks=[])
        head = repo.commits[repo.branches[name]]
        _put(
            body,
            name=name,
            commit=self._commit_json(repo, head, body["commit"]),
            protected=False,
            protection_url=f"{url}/protection",
        )
        return 200, body, {}

    def _list_deployments(self, call: _Call) -> Result:
        repo, query = call.repo, call.query
        selected = [
            d
            for d in reversed(repo.deployments)
            if query.get("sha") in (None, d.sha)
            and query.get("ref") in (None, d.ref)
            and query.get("task") in (None, d.task)
            and query.get("environment") in (None, d.environment)
        ]
        page, headers = self._paginate(selected, f"/repos/{repo.full_name}/deployments", query)
        body = [self._deployment_json(repo, d, _template("deployments-list.json", 0)) for d in page]
        return 200, body, headers

    def _create_deployment(self, call: _Call) -> Result:
        repo, body = call.repo, call.body
        if not isinstance(body, dict) or not isinstance(body.get("ref"), str):
            raise _error(422, 'Invalid request.\n\n"ref" wasn\'t supplied.')
        sha = self._find_commit(repo, body["ref"])
        if sha is None:
            raise _error(422, f"No ref found for: {body['ref']}")
        environment = str(body.get("environment") or "production")
        deployment = self._new_deployment(
            repo,
            sha,
            body["ref"],
            str(body.get("task") or "deploy"),
            environment,
            body.get("description"),
            body.get("payload") or {},
            _truthy(body.get("transient_environment"), False),
            _truthy(body.get("production_environment"), environment == "production"),
        )
        return 201, self._deployment_json(repo, deployment, _template("deployment-create.json")), {}

    def _get_deployment(self, call: _Call) -> Result:
        deployment = self._deployment_or_404(call.repo, call.params["id"])
        return 200, self._deployment_json(call.repo, deployment, _template("deployment-create.json")), {}

    def _list_statuses(self, call: _Call) -> Result:
        repo = call.repo
        deployment = self._deployment_or_404(repo, call.params["id"])
        path = f"/repos/{repo.full_name}/deployments/{deployment.id}/statuses"
        page, headers = self._paginate(list(reversed(deployment.statuses)), path, call.query)
        body = [self._status_json(repo, deployment, s, _template("deployment-statuses-list.json", 0)) for s in page]
        return 200, body, headers

    def _get_status(self, call: _Call) -> Result:
        deployment = self._deployment_or_404(call.repo, call.params["id"])
        for status in deployment.statuses:
            if status.id == int(call.params["status_id"]):
                template = _template("deployment-statuses-list.json", 0)
                return 200, self._status_json(call.repo, deployment, status, template), {}
        raise _error(404, "Not Found")

    def _create_status(self, call: _Call) -> Result:
        repo, body = call.repo, call.body
        deployment = self._deployment_or_404(repo, call.params["id"])
        if not isinstance(body, dict) or not isinstance(body.get("state"), str):
            raise _error(422, 'Invalid request.\n\n"state" wasn\'t supplied.')
        status = self._add_status(
            repo,
            deployment,
            body["state"],
            str(body.get("description") or ""),
            str(body.get("environment") or deployment.environment),
            str(body.get("target_url") or body.get("log_url") or ""),
            str(body.get("environment_url") or ""),
            auto_inactive=_truthy(body.get("auto_inactive"), True),
        )
        return (
            201,
            self._status_json(repo, deployment, status, _template("deployment-status-create.json")),
            {},
        )

    def _list_workflows(self, call: _Call) -> Result:
        repo = call.repo
        page, headers = self._paginate(repo.workflows, f"/repos/{repo.full_name}/actions/workflows", call.query)
        workflows = [self._workflow_json(repo, w, _template("workflows-list.json", "workflows", 0)) for w in page]
        return (
            200,
            _put(_template("workflows-list.json"), total_count=len(repo.workflows), workflows=workflows),
            headers,
        )

    def _get_workflow(self, call: _Call) -> Result:
        workflow = self._workflow_or_404(call.repo, call.params["workflow"])
        return 200, self._workflow_json(call.repo, workflow, _template("workflow-get.json")), {}

    def _dispatch(self, call: _Call) -> Result:
        repo, body = call.repo, call.body
        workflow = self._workflow_or_404(repo, call.params["workflow"])
        if not isinstance(body, dict) or not isinstance(body.get("ref"), str):
            raise _dispatch_error('Invalid request.\n\n"ref" wasn\'t supplied.')
        ref = body["ref"].removeprefix("refs/heads/")
        if ref not in repo.branches:
            raise _dispatch_error(f"No ref found for: {body['ref']}")
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise _dispatch_error("Invalid request.\n\nFor 'properties/inputs', is not an object.")
        for name in workflow.required_inputs:
            if inputs.get(name) in (None, ""):
                raise _dispatch_error(f"Required input '{name}' not provided")
        if workflow.inputs is not None:
            unexpected = sorted(set(inputs) - set(workflow.inputs))
            if unexpected:
                raise _dispatch_error(f"Unexpected inputs provided: {json.dumps(unexpected)}")
        now = _now()
        number = sum(1 for r in repo.runs if r.workflow is workflow) + 1
        title = render_run_name(workflow.run_name, inputs) if workflow.run_name else workflow.name
        run = _Run(next(self._ids), workflow, ref, repo.branches[ref], dict(inputs), number, now, now, title)
        repo.runs.append(run)
        request = WorkflowRunRequest(repo.full_name, ref, dict(inputs), run.id, run.head_sha)
        thread = threading.Thread(target=self._drive_run, args=(run, request), name=f"run-{run.id}", daemon=True)
        self._run_threads.append(thread)
        thread.start()
        if not body.get("return_run_details"):
            return 204, None, {}
        details = _put(
            _template("workflow-dispatch-200-return-run-details.json"),
            workflow_run_id=run.id,
            run_url=f"{self._api(repo)}/actions/runs/{run.id}",
            html_url=f"{self._web(repo)}/actions/runs/{run.id}",
        )
        return 200, details, {}

    def _drive_run(self, run: _Run, request: WorkflowRunRequest) -> None:
        """Advance one run queued -> in_progress -> completed, calling `on_workflow_run` in between."""
        if self._stopping.wait(self.run_step_seconds):
            return
        with self._lock:
            run.status, run.updated_at = "in_progress", _now()
        if self._stopping.wait(self.run_step_seconds):
            return
        conclusion = "success"
        if self._on_workflow_run is not None:
            try:
                conclusion = self._on_workflow_run(request)
            except Exception:
                # A crashing deploy step is a failed job on GitHub too; keep the traceback for whoever debugs.
                log.exception("on_workflow_run failed for run %s", run.id)
                conclusion = "failure"
        with self._lock:
            run.status, run.conclusion, run.updated_at = "completed", conclusion, _now()

    def _list_runs(self, call: _Call) -> Result:
        repo, query = call.repo, call.query
        workflow = self._workflow_or_404(repo, call.params["workflow"])
        selected = [
            r
            for r in reversed(repo.runs)
            if r.workflow is workflow
            and query.get("branch") in (None, r.ref)
            and query.get("head_sha") in (None, r.head_sha)
            and query.get("status") in (None, r.status, r.conclusion)
            and query.get("event") in (None, "workflow_dispatch")
            and _created_matches(query.get("created"), r.created_at)
        ]
        path = f"/repos/{repo.full_name}/actions/workflows/{call.params['workflow']}/runs"
        page, headers = self._paginate(selected, path, query)
        runs = [self._run_json(repo, r, _template("workflow-runs-list.json", "workflow_runs", 0)) for r in page]
        return (
            200,
            _put(_template("workflow-runs-list.json"), total_count=len(selected), workflow_runs=runs),
            headers,
        )

    def _get_run(self, call: _Call) -> Result:
        for run in call.repo.runs:
            if run.id == int(call.params["run_id"]):
                return 200, self._run_json(call.repo, run, _template("workflow-run-get.json")), {}
        raise _error(404, "Not Found")
