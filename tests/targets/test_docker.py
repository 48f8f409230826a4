"""The `docker` deploy target against a real dockerd and a real Distribution registry, all on 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker.errors import NotFound

from runbook.errors import DeployError
from runbook.registry import RegistryCredentials
from runbook.targets.base import DeployRequest
from runbook.targets.docker import DockerDeployTarget
from runbook.targets.docker_settings import DockerTarget
from sandbox.dockerd import DockerEngine, build_service_image
from sandbox.registry import RegistryServer

REPOSITORY = "acme/shop"
GOOD, BROKEN, CRASHING = "a" * 40, "b" * 40, "c" * 40
USER, PASSWORD = "deployer", "s3cret-Registry-Passw0rd"


@dataclass(frozen=True)
class Images:
    registry: str
    digests: dict[str, str]

    def request(self, sha: str, digest: str | None = None) -> DeployRequest:
        digest = digest or self.digests[sha]
        return DeployRequest(
            "shop", "production", sha, f"{self.registry}/{REPOSITORY}@{digest}", digest, "test", "run-1"
        )

    def tag(self, sha: str) -> str:
        return f"{self.registry}/{REPOSITORY}:{sha}"


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    with DockerEngine() as started:
        yield started


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with RegistryServer(mode="open") as server:
        yield server


@pytest.fixture(scope="module")
def images(engine: DockerEngine, registry: RegistryServer) -> Images:
    return Images(
        registry.host,
        {
            GOOD: build_service_image(engine, registry.host, REPOSITORY, GOOD),
            BROKEN: build_service_image(engine, registry.host, REPOSITORY, BROKEN, broken=True),
            CRASHING: build_service_image(engine, registry.host, REPOSITORY, CRASHING, crash=True),
        },
    )


@pytest.fixture
def client(engine: DockerEngine) -> Iterator[Any]:
    docker_client = engine.client()
    yield docker_client
    engine.remove_all_containers()
    docker_client.close()


@pytest.fixture
def port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free: int = sock.getsockname()[1]
        return free


def start_service(client: Any, image: str, name: str, port: int, data: Path, **extra: Any) -> Any:
    """The service as it was deployed: host network, 127.0.0.1 only, settings a deploy must keep."""
    data.mkdir(exist_ok=True)
    (data / "config.txt").write_text("kept\n")
    options: dict[str, Any] = {
        "name": name,
        "detach": True,
        "network_mode": "host",
        "init": True,
        "environment": {"PORT": str(port), "SHOP_MODE": "production"},
        "labels": {"com.acme.service": "shop", "com.acme.team": "payments"},
        "restart_policy": {"Name": "unless-stopped"},
        "volumes": {str(data): {"bind": "/data", "mode": "ro"}},
        "working_dir": "/www",
    }
    options.update(extra)
    container = client.containers.run(image, **options)
    wait_for_http(port)
    return container


def wait_for_http(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing answers on 127.0.0.1:{port}")


def health(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


def target(engine: DockerEngine, **settings: Any) -> DockerDeployTarget:
    values: dict[str, Any] = {"type": "docker", "host": engine.host, "stop_timeout_seconds": 5}
    values["start_timeout_seconds"] = 10
    values.update(settings)
    return DockerDeployTarget(DockerTarget(**values), registry_credentials={}, insecure_registries=[])


def names(client: Any) -> dict[str, str]:
    return {c.name: c.status for c in client.containers.list(all=True)}


def test_current_version_reads_the_sha_label(
    engine: DockerEngine, images: Images, client: Any, port: int, tmp_path: Path
) -> None:
    start_service(client, images.tag(BROKEN), "shop", port, tmp_path / "data")
    # The image's label (org.opencontainers.image.revision) tells; a label on the container wins.
    assert target(engine, container="shop").current_version() == BROKEN
    assert target(engine, label="com.acme.service=shop").current_version() == BROKEN
    assert target(engine, container="shop", sha_label="com.acme.team").current_version() == "payments"
    assert target(engine, container="shop", sha_label="com.acme.revision").current_version() is None


def test_deploy_replaces_the_container_by_digest_keeping_its_settings(
    engine: DockerEngine, images: Images, client: Any, port: int, tmp_path: Path
) -> None:
    old = start_service(client, images.tag(BROKEN), "shop", port, tmp_path / "data")
    assert health(port).status_code == 404  # the broken version
    docker_target = target(engine, container="shop")
    assert "container shop" in docker_target.preflight() and names(client) == {"shop": "running"}

    started = time.monotonic()
    result = docker_target.deploy(images.request(GOOD))
    seconds = time.monotonic() - started

    assert not result.skipped and result.target == "docker" and result.previous == old.id
    new = client.containers.get("shop")
    assert new.id != old.id and result.link == f"docker container {new.id[:12]}"
    assert f"{images.registry}/{REPOSITORY}@{images.digests[GOOD]}" in new.image.attrs["RepoDigests"]
    assert new.attrs["Config"]["Image"] == images.request(GOOD).image
    assert health(port).json() == {"status": "ok", "version": GOOD}
    config, host_config = new.attrs["Config"], new.attrs["HostConfig"]
    assert {"PORT=" + str(port), "SHOP_MODE=production"} <= set(config["Env"])
    assert config["Labels"]["com.acme.service"] == "shop" and config["Labels"]["com.acme.team"] == "payments"
    assert config["Labels"]["org.opencontainers.image.revision"] == GOOD
    assert config["WorkingDir"] == "/www"
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert host_config["NetworkMode"] == "host" and host_config["Init"] is True
    assert host_config["Binds"] == [f"{tmp_path / 'data'}:/data:ro"]
    assert new.exec_run(["/bin/busybox", "cat", "/data/config.txt"]).output == b"kept\n"
    # The old container waits, stopped and out of the way (and never restarted by dockerd), for finish().
    old.reload()
    assert old.name == f"shop-rollback-old-{old.id[:12]}" and old.status == "exited"
    assert old.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert docker_target.current_version() == GOOD

    assert docker_target.finish(result) == f"removed the previous container {old.name} ({old.id[:12]})"
    assert names(client) == {"shop": "running"}
    assert "already removed" in str(docker_target.finish(result))
    print(f"\ndocker deploy (pull by digest, stop, swap, start, settle): {seconds:.2f} s")


def test_already_on_the_digest_is_skipped(
    engine: DockerEngine, images: Images, client: Any, port: int, tmp_path: Path
) -> None:
    old = start_service(client, images.request(GOOD).image, "shop", port, tmp_path / "data")

    result = target(engine, container="shop").deploy(images.request(GOOD))

    assert result.skipped and images.digests[GOOD] in result.detail and result.previous is None
    assert client.containers.get("shop").id == old.id and names(client) == {"shop": "running"}


def test_new_container_that_exits_puts_the_old_one_back(
    engine: DockerEngine, images: Images, client: Any, port: int, tmp_path: Path
) -> None:
    old = start_service(client, images.tag(BROKEN), "shop", port, tmp_path / "data")

    with pytest.raises(DeployError) as caught:
        target(engine, container="shop").deploy(images.request(CRASHING))

    message = str(caught.value)
    assert "exited with code 3" in message and "was put back and restarted" in message
    assert "panic: cannot connect to database" in message and f"starting shop {CRASHING[:7]}" in message
    assert names(client) == {"shop": "running"}
    old.reload()
    assert old.name == "shop" and old.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    wait_for_http(port)
    assert health(port).status_code == 404  # the version that ran before, still serving


def test_restart_policy_does_not_hide_a_crash(
    engine: DockerEngine, images: Images, client: Any, port: int, tmp_path: Path
) -> None:
    start_service(client, images.tag(BROKEN), "shop", port, tmp_path / "data", restart_policy={"Name": "always"})

    with pytest.raises(DeployError, match="panic: cannot connect to database"):
        target(engine, container="shop").deploy(images.request(CRASHING))

    assert names(client) == {"shop": "running"}
    assert client.containers.get("shop").attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"


def test_a_stopped_service_can_be_rolled_back(
    engine: DockerEngine, images: Images, client: Any, port: int, tmp_path: Path
) -> None:
    old = start_service(client, images.tag(BROKEN), "shop", port, tmp_path / "data")
    old.stop(timeout=5)

    result = target(engine, label="com.acme.service=shop").deploy(images.request(GOOD))

    assert not result.skipped and health(port).json()["version"] == GOOD
    assert names(client) == {"shop": "running", f"shop-rollback-old-{old.id[:12]}": "exited"}


def test_missing_digest_changes_nothing(
    engine: DockerEngine, images: Images, client: Any, port: int, tmp_path: Path
) -> None:
    old = start_service(client, images.tag(BROKEN), "shop", port, tmp_path / "data")
    missing = "sha256:" + "0" * 64

    with pytest.raises(DeployError) as caught:
        target(engine, container="shop").deploy(images.request(GOOD, digest=missing))

    assert "could not pull" in str(caught.value) and "nothing was changed" in str(caught.value)
    assert names(client) == {"shop": "running"} and client.containers.get("shop").id == old.id
    assert health(port).status_code == 404


def test_label_must_select_exactly_one_container(
    engine: DockerEngine, images: Images, client: Any, port: int, tmp_path: Path
) -> None:
    start_service(client, images.tag(BROKEN), "shop", port, tmp_path / "data")
    client.containers.create(images.tag(GOOD), name="shop-canary", labels={"com.acme.service": "shop"})
    client.containers.get("shop-canary").start()
    docker_target = target(engine, label="com.acme.service=shop")

    with pytest.raises(DeployError, match=r"2 running containers have label com.acme.service=shop.*shop-canary"):
        docker_target.current_version()
    with pytest.raises(DeployError, match="no container named 'cart'"):
        target(engine, container="cart").preflight()


@pytest.mark.parametrize("host", ["unix:///tmp/runbook-no-such-dir/docker.sock", "tcp://127.0.0.1:{port}"])
def test_unreachable_engine(images: Images, port: int, host: str) -> None:
    docker_target = DockerDeployTarget(
        DockerTarget(type="docker", host=host.format(port=port), container="shop"),
        registry_credentials={},
        insecure_registries=[],
    )
    for call in (
        docker_target.current_version,
        docker_target.preflight,
        lambda: docker_target.deploy(images.request(GOOD)),
    ):
        with pytest.raises(DeployError) as caught:
            call()
        assert f"cannot reach the Docker engine at {host.format(port=port)}" in str(caught.value)
        assert "nothing was changed" in caught.value.hint
    assert ("exists and is readable" in caught.value.hint) == host.startswith("unix://")


def test_pulls_with_registry_credentials_and_never_shows_them(
    engine: DockerEngine, client: Any, port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with RegistryServer(mode="htpasswd", users={USER: PASSWORD}) as private:
        auth = {"username": USER, "password": PASSWORD}
        good = build_service_image(engine, private.host, REPOSITORY, GOOD, auth=auth)
        broken = build_service_image(engine, private.host, REPOSITORY, BROKEN, broken=True, auth=auth)
        # Only what was pulled with credentials can be on the engine: drop the built copies.
        for reference in (f"{private.host}/{REPOSITORY}:{GOOD}", f"{private.host}/{REPOSITORY}@{good}"):
            with contextlib.suppress(NotFound):
                client.images.remove(reference)
        with pytest.raises(NotFound):
            client.images.get(f"{private.host}/{REPOSITORY}@{good}")
        private_images = Images(private.host, {GOOD: good, BROKEN: broken})
        start_service(client, private_images.tag(BROKEN), "shop", port, tmp_path / "data")

        def with_password(password: str) -> DockerDeployTarget:
            return DockerDeployTarget(
                DockerTarget(type="docker", host=engine.host, container="shop", start_timeout_seconds=10),
                registry_credentials={private.host: RegistryCredentials(USER, password)},
                insecure_registries=[private.host],
            )

        wrong = with_password("not-the-Passw0rd")
        with pytest.raises(DeployError) as caught:
            wrong.deploy(private_images.request(GOOD))
        assert "credentials" in caught.value.hint and "not-the-Passw0rd" not in str(caught.value)
        assert "not-the-Passw0rd" not in repr(wrong) and names(client) == {"shop": "running"}

        right = with_password(PASSWORD)
        result = right.deploy(private_images.request(GOOD))
        assert health(port).json()["version"] == GOOD
        right.finish(result)

    shown = " ".join([result.detail, str(result), right.preflight(), repr(right), caplog.text])
    assert PASSWORD not in shown


def test_overrides_of_the_image_defaults_are_kept(
    engine: DockerEngine, images: Images, client: Any, port: int, tmp_path: Path
) -> None:
    command = [f"echo custom command; exec /bin/busybox httpd -f -p 127.0.0.1:{port} -h /www"]
    created = client.api.create_container(
        images.tag(BROKEN),
        name="shop",
        command=command,
        user="65534:65534",
        ports=[(9090, "tcp")],
        stop_signal="SIGINT",
        host_config=client.api.create_host_config(network_mode="host", init=True),
    )
    client.api.start(created["Id"])
    wait_for_http(port)

    target(engine, container="shop").deploy(images.request(GOOD))

    config = client.containers.get("shop").attrs["Config"]
    assert config["Cmd"] == command and config["Entrypoint"] == ["/bin/busybox", "sh", "-c"]  # from the image
    assert config["User"] == "65534:65534" and config["StopSignal"] == "SIGINT"
    assert "9090/tcp" in config["ExposedPorts"]
    assert "PORT=8080" in config["Env"]  # the image's default, not copied as if set on the container
    assert health(port).json()["version"] == GOOD
    assert "custom command" in client.containers.get("shop").logs().decode()
