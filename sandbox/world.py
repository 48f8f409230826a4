"""The sandbox: a broken local service, its history, images, deployments, workflow and Slack, all on 127.0.0.1.

Story: `acme/shop` has four commits on `main`, each built and pushed to a real Distribution registry and
deployed to production with a `success` status. The newest, "New payment provider", crashes: its
`/health` answers 500. The last known good is "Faster checkout". The repository's `rollback-production`
workflow, when dispatched, checks the image of the given SHA in the registry and switches the app to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

import deployments
from sandbox.app import SandboxApp
from sandbox.github_standin import GitHubStandIn, WorkflowRunRequest
from sandbox.registry import RegistryServer, push_image
from sandbox.slack_standin import SlackStandIn

REPOSITORY = "acme/shop"
SERVICE = "shop"
ENVIRONMENT = "production"
CHANNEL = "#incidents-prod"
GITHUB_TOKEN_VAR = "RUNBOOK_SANDBOX_GITHUB_TOKEN"
SLACK_TOKEN_VAR = "RUNBOOK_SANDBOX_SLACK_TOKEN"
# The template shipped with the product (package data of `deployments`), as a user copies it.
WORKFLOW_TEMPLATE = Path(deployments.__file__).resolve().parent / "github" / "rollback-production.yml"
HISTORY = ("Initial shop", "Add cart", "Faster checkout", "New payment provider")


@dataclass
class SandboxCommits:
    """The SHAs of the story, by role."""

    all: list[str]

    @property
    def last_known_good(self) -> str:
        return self.all[-2]

    @property
    def broken(self) -> str:
        return self.all[-1]


class Sandbox:
    """Starts the local servers, seeds the story and writes a configuration that points at them."""

    def __init__(
        self,
        workdir: Path,
        *,
        run_step_seconds: float = 0.2,
        echo: Callable[[str], None] | None = None,
        github_token: str = "ghp_sandbox_token_not_secret_0000000000",
        slack_token: str = "xoxb-sandbox-token-not-secret",
    ) -> None:
        self.workdir = workdir
        self.github_token = github_token
        self.slack_token = slack_token
        self.registry = RegistryServer(mode="open")
        self.github = GitHubStandIn(
            token=github_token, run_step_seconds=run_step_seconds, on_workflow_run=self._run_workflow
        )
        self.slack = SlackStandIn(token=slack_token, channels={CHANNEL: "C0INCIDENT1"}, echo=echo)
        self.app = SandboxApp(version="0" * 40)
        self.commits = SandboxCommits([])
        self.workflow_fails = False  # tests: the rollback workflow's deploy job fails
        self.deployed_digests: list[str] = []  # what the rollback workflow deployed, in order (registry digests)
        self.config_path = workdir / "runbook.yaml"

    @property
    def image(self) -> str:
        return f"{self.registry.host}/acme/shop"

    def start(self) -> Sandbox:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.registry.__enter__()
        self.github.start()
        self.slack.start()
        self.app.start()
        self._seed()
        os.environ[GITHUB_TOKEN_VAR] = self.github_token
        os.environ[SLACK_TOKEN_VAR] = self.slack_token
        self.config_path.write_text(yaml.safe_dump(self.config_data(), sort_keys=False), encoding="utf-8")
        return self

    def stop(self) -> None:
        for stop in (self.app.stop, self.slack.stop, self.github.stop):
            stop()
        self.registry.__exit__(None, None, None)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _seed(self) -> None:
        self._seed_history()
        self.app.broken.add(self.commits.broken)
        self.app.deploy(self.commits.broken)

    def _seed_history(self) -> None:
        """The repository, its workflow, and each commit built, pushed and deployed by CI."""
        self.github.add_repository(REPOSITORY)
        # The repository holds the shipped template: its inputs and its run-name are GitHub's to enforce.
        template = yaml.safe_load(WORKFLOW_TEMPLATE.read_text(encoding="utf-8"))
        inputs = template[True]["workflow_dispatch"]["inputs"]  # YAML 1.1 reads the key `on` as a boolean
        required = tuple(name for name, spec in inputs.items() if spec.get("required"))
        self.github.add_workflow(
            REPOSITORY, required_inputs=required, inputs=tuple(inputs), run_name=template["run-name"]
        )
        shas = []
        for message in HISTORY:
            sha = self.github.add_commit(REPOSITORY, message)
            self._release(sha, message, broken=message == HISTORY[-1])
            # CI deployed every commit, and each looked healthy when it went out.
            self.github.add_deployment(REPOSITORY, sha, ENVIRONMENT, state="success", description="CI deploy")
            shas.append(sha)
        self.commits = SandboxCommits(shas)

    def _release(self, sha: str, message: str, *, broken: bool) -> None:
        """Build and push the image of one commit (here: an image whose content names the commit)."""
        push_image(self.registry.base_url, "acme/shop", sha, payload=f"shop {message}".encode())

    def push(self, sha: str) -> str:
        """Push an image for a commit (tests use it for commits added later)."""
        return push_image(self.registry.base_url, "acme/shop", sha, payload=f"shop {sha}".encode())

    def _run_workflow(self, request: WorkflowRunRequest) -> str:
        """What the shipped rollback-production workflow does: pull IMAGE@digest (or IMAGE:sha), deploy it."""
        return "failure" if self.workflow_fails else self._deploy_image(request, "acme/shop", self.app)

    def _deploy_image(self, request: WorkflowRunRequest, image_path: str, app: SandboxApp) -> str:
        """The workflow's job: the image IMAGE@digest (or IMAGE:sha) must be in the registry; `app` then runs it."""
        sha = str(request.inputs.get("sha", ""))
        reference = str(request.inputs.get("digest") or sha)
        url = f"{self.registry.base_url}/v2/{image_path}/manifests/{reference}"
        accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
        answer = httpx.head(url, headers={"Accept": accept}, timeout=5)
        if answer.status_code != 200:
            return "failure"
        self.deployed_digests.append(answer.headers.get("Docker-Content-Digest", ""))
        app.deploy(sha)
        return "success"

    def config_data(self, **environment_overrides: Any) -> dict[str, Any]:
        """The runbook configuration for this sandbox (as YAML data)."""
        production: dict[str, Any] = {
            "deploy": {
                "type": "github-actions",
                "workflow": "rollback-production.yml",
                "poll_interval_seconds": 0.1,
                "timeout_seconds": 30,
            },
            "health": {
                "probes": [
                    {"name": "health", "url": f"{self.app.url}/health"},
                    {"name": "home", "url": self.app.url},
                ],
                "consecutive_successes": 3,
                "interval_seconds": 0.1,
                "probe_timeout_seconds": 2,
                "deadline_seconds": 5,
            },
            "url": self.app.url,
        }
        production.update(environment_overrides)
        return {
            "github": {"base_url": self.github.base_url, "token": {"env": GITHUB_TOKEN_VAR}},
            "slack": {
                "base_url": self.slack.base_url,
                "token": {"env": SLACK_TOKEN_VAR},
                "language": "fr",
                "delivery_seconds": 2,  # a Slack kept down by a test is given up on quickly
            },
            "registries": [{"host": self.registry.host, "insecure": True}],
            "services": {
                SERVICE: {
                    "repository": REPOSITORY,
                    "branch": "main",
                    "image": self.image,
                    "tag_format": "{sha}",
                    "slack": {"channel": CHANNEL, "mentions": ["<!subteam^S0DEVTEAM>", "<@U0PRODUCTOWNER>"]},
                    "environments": {ENVIRONMENT: production},
                }
            },
        }

    def write_config(self, data: dict[str, Any], name: str = "runbook.yaml") -> Path:
        """Write another configuration next to the default one (for tests)."""
        path = self.workdir / name
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path
