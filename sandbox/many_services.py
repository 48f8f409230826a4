"""The sandbox with more services: each its own repository, images and running app, all broken the same way.

`ManyServicesSandbox(workdir, services=["svc-01", ...])` is the sandbox (`acme/shop`, its registry, GitHub and
Slack stand-ins, its app) plus, per extra service `NAME`: the repository `acme/NAME` in the GitHub stand-in with
the same history as `acme/shop` (same messages: its SHAs differ, they hash the repository's name), each commit's
image `acme/NAME:<sha>` in the registry and a `success` deployment to production, the rollback workflow, and its
own `SandboxApp` running the broken newest commit. The rollback workflow of `acme/NAME` deploys to that app: a
rollback of each service really resolves, dispatches and gets healthy.

`config_data()` configures every service (the sandbox's `shop` first); `break_service(name)` ships a new broken
version of any of them (a commit, its image, a `success` deployment, the app running it): the next alert has a
rollback to do.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from sandbox.app import SandboxApp
from sandbox.github_standin import WorkflowRunRequest
from sandbox.registry import push_image
from sandbox.world import ENVIRONMENT, HISTORY, REPOSITORY, SERVICE, WORKFLOW_TEMPLATE, Sandbox


@dataclass
class ServiceWorld:
    """One service of the world: its name, repository (`acme/NAME`), image path in the registry, and its app."""

    name: str
    repository: str
    image_path: str
    app: SandboxApp


class ManyServicesSandbox(Sandbox):
    """The sandbox, plus one repository, image history and running app per extra service."""

    def __init__(self, workdir: Path, *, services: Sequence[str] = (), **options: Any) -> None:
        super().__init__(workdir, **options)
        if SERVICE in services:
            raise ValueError(f"{SERVICE!r} is the sandbox's own service: name the extra ones otherwise")
        self.extra = {
            name: ServiceWorld(name, f"acme/{name}", f"acme/{name}", SandboxApp(version="0" * 40)) for name in services
        }

    def service(self, name: str) -> ServiceWorld:
        """Any service of the world, the sandbox's own `shop` included."""
        if name == SERVICE:
            return ServiceWorld(SERVICE, REPOSITORY, "acme/shop", self.app)
        return self.extra[name]

    @property
    def names(self) -> list[str]:
        """The extra services, in the order given."""
        return list(self.extra)

    def start(self) -> ManyServicesSandbox:
        # The apps first: the configuration the sandbox writes at its start names their URLs.
        for world in self.extra.values():
            world.app.start()
        try:
            super().start()
            for world in self.extra.values():
                self._seed_service(world)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for world in self.extra.values():
            world.app.stop()
        super().stop()

    def __enter__(self) -> ManyServicesSandbox:
        return self.start()

    def _seed_service(self, world: ServiceWorld) -> None:
        """The repository with the sandbox's history and workflow, each commit released and deployed by CI."""
        self.github.add_repository(world.repository)
        template = yaml.safe_load(WORKFLOW_TEMPLATE.read_text(encoding="utf-8"))
        inputs = template[True]["workflow_dispatch"]["inputs"]  # YAML 1.1 reads the key `on` as a boolean
        required = tuple(name for name, spec in inputs.items() if spec.get("required"))
        self.github.add_workflow(
            world.repository, required_inputs=required, inputs=tuple(inputs), run_name=template["run-name"]
        )
        sha = ""
        for message in HISTORY:
            sha = self.github.add_commit(world.repository, message)
            push_image(self.registry.base_url, world.image_path, sha, payload=f"{world.name} {message}".encode())
            self.github.add_deployment(world.repository, sha, ENVIRONMENT, state="success", description="CI deploy")
        world.app.broken.add(sha)
        world.app.deploy(sha)

    def break_service(self, name: str, message: str) -> str:
        """CI ships a new version of `name` that breaks: commit, image, `success` deployment, the app runs it."""
        world = self.service(name)
        sha = self.github.add_commit(world.repository, message)
        push_image(self.registry.base_url, world.image_path, sha, payload=f"{name} {sha}".encode())
        self.github.add_deployment(world.repository, sha, ENVIRONMENT, state="success")
        world.app.broken.add(sha)
        world.app.deploy(sha)
        return sha

    def healthy(self, name: str) -> bool:
        """Whether the service's app answers its health check now."""
        return httpx.get(f"{self.service(name).app.url}/health", timeout=5).status_code == 200

    def _run_workflow(self, request: WorkflowRunRequest) -> str:
        """The rollback-production workflow of an extra service deploys to its own app; `shop`'s as before."""
        world = next((w for w in self.extra.values() if w.repository.lower() == request.repository.lower()), None)
        if world is None:
            return super()._run_workflow(request)
        return "failure" if self.workflow_fails else self._deploy_image(request, world.image_path, world.app)

    def config_data(self, **environment_overrides: Any) -> dict[str, Any]:
        """The sandbox's configuration, with every extra service configured like `shop`, on its own app."""
        data = super().config_data(**environment_overrides)
        template = data["services"][SERVICE]
        for world in self.extra.values():
            if not world.app.running:  # before start: the sandbox's own service only
                continue
            service = copy.deepcopy(template)  # no YAML anchors: each service is written out
            service["repository"] = world.repository
            service["image"] = f"{self.registry.host}/{world.image_path}"
            production = service["environments"][ENVIRONMENT]
            production["health"]["probes"] = [
                {"name": "health", "url": f"{world.app.url}/health"},
                {"name": "home", "url": world.app.url},
            ]
            production["url"] = world.app.url
            data["services"][world.name] = service
        return data
