"""The `rollback` flow end to end with the `docker` deploy target: a real dockerd, a real registry, real containers.

The sandbox's story (four commits of acme/shop, each deployed with a `success` status, the newest broken),
except that every commit is a real image built and pushed to the registry, and production is a container
named `shop` on a private Docker engine, running the broken image. The rollback must swap it for the last
known good image, by digest, and remove the old container once /health answers.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.dockerd import DockerEngine, build_service_image
from sandbox.registry import delete_tag
from sandbox.world import ENVIRONMENT, REPOSITORY, SERVICE, Sandbox
from tests.support.rollback import run_rollback

SEED_3 = "Rollback terminé. Le système est de nouveau opérationnel. Une analyse post-mortem sera effectuée."

pytestmark = pytest.mark.usefixtures("prefect_server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DockerSandbox(Sandbox):
    """The sandbox whose production runs as a container on a Docker engine (deploy type `docker`)."""

    def __init__(self, workdir: Path, engine: DockerEngine, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.engine = engine
        self.port = _free_port()
        self.digests: dict[str, str] = {}

    def _release(self, sha: str, message: str, *, broken: bool) -> None:
        self.push(sha, broken=broken)

    def _seed(self) -> None:
        self._seed_history()
        with contextlib.closing(self.engine.client()) as client:
            client.containers.run(
                f"{self.image}:{self.commits.broken}",
                name=SERVICE,
                detach=True,
                network_mode="host",
                init=True,
                environment={"PORT": str(self.port)},
                labels={"org.opencontainers.image.revision": self.commits.broken, "com.acme.service": SERVICE},
                restart_policy={"Name": "unless-stopped"},
            )

    def push(self, sha: str, *, broken: bool = False) -> str:
        digest = build_service_image(self.engine, self.registry.host, "acme/shop", sha, broken=broken)
        self.digests[sha] = digest
        return digest

    def stop(self) -> None:
        try:
            self.engine.remove_all_containers()
        finally:
            super().stop()

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_data(self, **environment_overrides: Any) -> dict[str, Any]:
        production: dict[str, Any] = {
            "deploy": {
                "type": "docker",
                "host": self.engine.host,
                "container": SERVICE,
                "stop_timeout_seconds": 5,
                "start_timeout_seconds": 15,
            },
            "health": {
                "probes": [
                    {"name": "health", "url": f"{self.service_url}/health", "contains": '"status":"ok"'},
                    {"name": "home", "url": self.service_url},
                ],
                "consecutive_successes": 3,
                "interval_seconds": 0.1,
                "probe_timeout_seconds": 2,
                "deadline_seconds": 10,
            },
            "url": self.service_url,
        }
        production.update(environment_overrides)
        return super().config_data(**production)

    def health(self) -> int:
        return httpx.get(f"{self.service_url}/health", timeout=5).status_code

    def containers(self) -> dict[str, Any]:
        with contextlib.closing(self.engine.client()) as client:
            return {c.name: c for c in client.containers.list(all=True)}


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    with DockerEngine() as started:
        yield started


@pytest.fixture
def sandbox(tmp_path: Path, engine: DockerEngine) -> Iterator[DockerSandbox]:
    with DockerSandbox(tmp_path, engine, run_step_seconds=0.05) as world:
        yield world


def run(sandbox: DockerSandbox, **parameters: Any) -> Any:
    return run_rollback(sandbox, **parameters)


def test_rolls_the_container_back_to_the_last_known_good_image(sandbox: DockerSandbox, output_dir: Path) -> None:
    good, broken = sandbox.commits.last_known_good, sandbox.commits.broken
    before = sandbox.containers()
    assert list(before) == [SERVICE] and sandbox.health() == 404

    state = run(sandbox, reason="5xx spike", incident="INC-7")

    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary.outcome, summary.from_sha, summary.to_sha) == ("recovered", broken, good)
    assert summary.digest == sandbox.digests[good]
    after = sandbox.containers()
    assert list(after) == [SERVICE], "the old container is removed once the service is healthy"
    shop = after[SERVICE]
    assert shop.id != before[SERVICE].id and shop.status == "running"
    assert f"{sandbox.image}@{sandbox.digests[good]}" in shop.image.attrs["RepoDigests"]
    assert shop.labels["org.opencontainers.image.revision"] == good and shop.labels["com.acme.service"] == SERVICE
    assert f"PORT={sandbox.port}" in shop.attrs["Config"]["Env"]
    assert shop.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert sandbox.health() == 200
    assert httpx.get(f"{sandbox.service_url}/health", timeout=5).json()["version"] == good
    # Recorded healthy in GitHub: the container's version is tomorrow's last known good.
    assert sandbox.github.deployments(REPOSITORY, ENVIRONMENT)[0]["sha"] == good
    assert SEED_3 in sandbox.slack.messages[-1].text

    timing = (
        f"docker rollback broken -> healthy: time to recovery {summary.time_to_recovery:.2f} s "
        f"(deploy step {summary.step_seconds['deploy']:.2f} s, health check "
        f"{summary.step_seconds['health-check']:.2f} s)"
    )
    print(f"\n{timing}")
    (output_dir / "docker-rollback-timing.txt").write_text(timing + "\n", encoding="utf-8")


def test_missing_image_changes_nothing(sandbox: DockerSandbox) -> None:
    wanted = sandbox.commits.all[1]
    delete_tag(sandbox.registry.base_url, "acme/shop", wanted)
    before = sandbox.containers()

    state = run(sandbox, sha=wanted)

    assert state.is_failed()
    after = sandbox.containers()
    assert list(after) == [SERVICE] and after[SERVICE].id == before[SERVICE].id
    assert after[SERVICE].status == "running" and after[SERVICE].labels["org.opencontainers.image.revision"] == (
        sandbox.commits.broken
    )
    assert sandbox.health() == 404
    assert "verify-image" in sandbox.slack.messages[-1].text
