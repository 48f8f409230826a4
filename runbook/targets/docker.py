"""Deploy on a Docker engine: pull the image by digest, replace the service's container keeping its configuration.

The swap, with a way back at every step:

1. find the service's container (by name, or by a label matching exactly one container);
2. skip when it already runs the image with that digest;
3. pull `registry/name@sha256:...` with the registry's credentials (nothing has changed if this fails);
4. create the new container from the old one's configuration, under a temporary name;
5. stop the old container, turn off its restart policy, rename it `<name>-rollback-old-<id>`;
6. give the new container the original name, start it, wait until it runs (and is not `unhealthy`);
7. if it exits, restarts or turns unhealthy: remove it, give the old one back its name, policy and
   state, and raise DeployError with the new container's last log lines.

The old container stays (stopped) until `finish()` removes it, after the health check passed.
Registry credentials go to the engine in the pull request only: never in a message or a log line.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import docker
from docker.errors import DockerException, NotFound
from docker.utils import kwargs_from_env
from requests.exceptions import RequestException

from runbook import messages, progress
from runbook.config import RunbookConfig
from runbook.errors import DeployError
from runbook.registry import RegistryCredentials
from runbook.service_images import insecure_registries, registry_credentials
from runbook.targets.base import DeployRequest, DeployResult
from runbook.targets.docker_settings import DockerTarget

log = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
OLD_SUFFIX = "-rollback-old-"
NEW_SUFFIX = "-rollback-new-"
_CLIENT_TIMEOUT = 60.0  # per request; a stop adds its own timeout to it
_SETTLE_SECONDS = 1.0  # a container still running this long after start did not crash at once
_LOG_LINES = 20
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
_DOCKER_ERRORS = (DockerException, RequestException)


def _registry_host(image: str) -> str:
    """The registry part of `host[:port]/name@sha256:...` (Docker Hub when there is none)."""
    first, sep, _rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _short(container_id: str) -> str:
    return container_id[:12]


def _digests(image_attrs: Mapping[str, Any]) -> set[str]:
    """The manifest digests an image was pulled or pushed by (from its RepoDigests)."""
    return {d.rpartition("@")[2] for d in image_attrs.get("RepoDigests") or [] if "@" in d}


def _links(links: list[str] | None) -> list[str] | None:
    """Inspect shows links as `/db:/shop/db`; create wants `db:db`."""
    if not links:
        return links
    out = []
    for link in links:
        target, _, alias = link.partition(":")
        out.append(f"{target.lstrip('/')}:{alias.rsplit('/', 1)[-1] or target.lstrip('/')}")
    return out


def _own_env(config: Mapping[str, Any], image_config: Mapping[str, Any]) -> list[str]:
    """The container's environment without what its image set (the new image sets its own)."""
    image_env = set(image_config.get("Env") or [])
    return [e for e in config.get("Env") or [] if e not in image_env]


def _own_labels(config: Mapping[str, Any], image_config: Mapping[str, Any]) -> dict[str, str]:
    """The container's labels without those its image set to the same value."""
    image_labels = image_config.get("Labels") or {}
    return {k: v for k, v in (config.get("Labels") or {}).items() if image_labels.get(k) != v}


def _command(config: Mapping[str, Any], image_config: Mapping[str, Any]) -> dict[str, Any]:
    """Entrypoint and command, when the container set them rather than took them from its image."""
    if config.get("Entrypoint") != image_config.get("Entrypoint"):
        # `docker run --entrypoint`: the image's command is not used either, so keep the container's.
        return {"entrypoint": config.get("Entrypoint") or [""], "command": config.get("Cmd")}
    if config.get("Cmd") != image_config.get("Cmd"):
        return {"command": config.get("Cmd")}
    return {}


_OVERRIDABLE = (("User", "user"), ("WorkingDir", "working_dir"), ("StopSignal", "stop_signal"))


def _overrides(config: Mapping[str, Any], image_config: Mapping[str, Any]) -> dict[str, Any]:
    """User, working dir, stop signal and health check set on the container (not inherited), and its stop timeout."""
    kwargs: dict[str, Any] = {}
    for key, arg in (*_OVERRIDABLE, ("Healthcheck", "healthcheck")):
        if config.get(key) and config.get(key) != image_config.get(key):
            kwargs[arg] = config[key]
    if config.get("StopTimeout") is not None:
        kwargs["stop_timeout"] = config["StopTimeout"]
    return kwargs


def _ports(config: Mapping[str, Any]) -> dict[str, Any]:
    """Exposed ports as create_container() wants them: `80` or `(53, 'udp')`."""
    exposed = config.get("ExposedPorts") or {}
    if not exposed:
        return {}
    return {"ports": [(int(p.split("/")[0]), p.split("/")[1]) if "/" in p else int(p) for p in exposed]}


def _identity(config: Mapping[str, Any], host_config: Mapping[str, Any], old_id: str) -> dict[str, Any]:
    """Host and domain names set on the container; none when it shares another's network (or the host's)."""
    network_mode = str(host_config.get("NetworkMode") or "default")
    if network_mode == "host" or network_mode.startswith("container:"):
        return {}
    kwargs: dict[str, Any] = {}
    hostname = config.get("Hostname")
    if hostname and hostname != _short(old_id):  # Docker's default hostname: the container's short id
        kwargs["hostname"] = hostname
    if config.get("Domainname"):
        kwargs["domainname"] = config["Domainname"]
    return kwargs


def _os_error(exc: BaseException) -> str | None:
    """The operating system's reason at the bottom of a connection failure, if there is one."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return str(current.strerror)
        if isinstance(current, TimeoutError):
            return "timed out"
        reason = getattr(current, "reason", None)
        linked = [current.__cause__, current.__context__, reason, *current.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))
    return None


def _service_containers(found: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Listed containers without those a rollback renamed aside (old or new), which carry the same labels."""
    return [c for c in found if not any(OLD_SUFFIX in n or NEW_SUFFIX in n for n in c.get("Names") or [])]


def _describe_containers(found: list[Mapping[str, Any]]) -> str:
    """`name (state), ...` of listed containers, or `none`."""
    return ", ".join(f"{(c.get('Names') or ['?'])[0].lstrip('/')} ({c.get('State')})" for c in found) or "none"


def _is_extra_network(network: str, mode: str) -> bool:
    """Whether `network` must be connected after create: not the network mode (given at create), not host/none,
    and not `bridge` under the `default` mode (which is bridge)."""
    if network == mode or network in ("host", "none"):
        return False
    return not (mode == "default" and network == "bridge")


def _connect_kwargs(endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """connect_container_to_network() arguments for an endpoint as create wants it (see `_endpoint`)."""
    ipam = endpoint.get("IPAMConfig") or {}
    return {
        "aliases": endpoint.get("Aliases"),
        "links": [tuple(link.split(":", 1)) for link in endpoint.get("Links") or []] or None,
        "ipv4_address": ipam.get("IPv4Address") or None,
        "ipv6_address": ipam.get("IPv6Address") or None,
        "link_local_ips": ipam.get("LinkLocalIPs") or None,
        "driver_opt": endpoint.get("DriverOpts"),
    }


def _start_failure(state: Mapping[str, Any], restarts: int) -> str | None:
    """What went wrong with a just-started container, judging by one inspection; None when it may still come up.

    A container restarted but running again (`restarts`, running) is not judged here: its State no longer
    holds the exit code, so the caller waits briefly for the next exit.
    """
    status = state.get("Status")
    if state.get("Restarting") or (restarts and status in ("exited", "dead")):
        return f"exited with code {state.get('ExitCode')} and is being restarted by its restart policy"
    if restarts:
        return None
    if status in ("exited", "dead"):
        error = f": {state['Error']}" if state.get("Error") else ""
        return f"exited with code {state.get('ExitCode')} right after it started{error}"
    if status == "running" and _health(state) == "unhealthy":
        return "is unhealthy (its image's HEALTHCHECK fails)"
    return None


def _health(state: Mapping[str, Any]) -> str | None:
    """The HEALTHCHECK status (`starting`, `healthy`, `unhealthy`), None when the image has no health check."""
    return (state.get("Health") or {}).get("Status")


class _StartWatch:
    """The clock of one wait for a just-started container: its deadline and when it was first seen up or restarted."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.settle = min(_SETTLE_SECONDS, timeout / 2)
        self.running_since: float | None = None
        self.restarted_since: float | None = None

    def restarted(self, restarts: int) -> str | None:
        """What to report about a container restarted by its policy and running again; None: wait a bit more.

        Its State no longer holds the exit code. A crashing image exits again within moments; wait briefly
        for that to name the code, else say what is known.
        """
        self.restarted_since = self.restarted_since or time.monotonic()
        if time.monotonic() - self.restarted_since >= _SETTLE_SECONDS or time.monotonic() > self.deadline:
            return f"exited and was restarted {restarts} time(s) by its restart policy"
        return None

    def up(self, state: Mapping[str, Any]) -> bool:
        """Running and healthy, or running (health not yet known or no health check) for `settle` seconds."""
        if state.get("Status") != "running":
            return False
        if _health(state) == "healthy":
            return True
        # A container still running this long after start did not crash at once.
        self.running_since = self.running_since or time.monotonic()
        return time.monotonic() - self.running_since >= self.settle

    def report(self, state: Mapping[str, Any], up: bool) -> None:
        """How far the start is (runbook/progress.py): Docker's status and health; 1 once up, None until then."""
        health = _health(state)
        status = f"{state.get('Status')}" + (f" ({health})" if health else "")
        seconds = time.monotonic() - self.started
        progress.report(
            1.0 if up else None, functools.partial(messages.progress_container, status=status, seconds=seconds)
        )

    def timed_out(self, state: Mapping[str, Any]) -> str | None:
        """`was not up within ...` once the deadline has passed, with the last status and health seen."""
        if time.monotonic() <= self.deadline:
            return None
        health = _health(state)
        return f"was not up within {self.timeout:.0f} s (status {state.get('Status')}" + (
            f", health {health})" if health else ")"
        )


def build(config: RunbookConfig, service_name: str, environment: str) -> DockerDeployTarget:
    """The Docker target of an environment, with the configured registries' credentials (read now)."""
    return DockerDeployTarget(
        config.deploy_settings(service_name, environment, DockerTarget),
        registry_credentials=registry_credentials(config),
        insecure_registries=insecure_registries(config),
    )


class DockerDeployTarget:
    """Replaces the service's container on a Docker engine with one running the image of the wanted commit."""

    name = "docker"

    def __init__(
        self,
        settings: DockerTarget,
        *,
        registry_credentials: Mapping[str, RegistryCredentials],
        insecure_registries: Collection[str],
    ) -> None:
        self._settings = settings
        self._credentials = dict(registry_credentials)
        self._insecure = set(insecure_registries)
        self._env_kwargs: dict[str, Any] = {}
        if settings.host is None:
            # DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, as the docker CLI reads them.
            self._env_kwargs = kwargs_from_env()
        self.host: str = settings.host or self._env_kwargs.pop("base_url", None) or DEFAULT_DOCKER_HOST

    def __repr__(self) -> str:
        return f"DockerDeployTarget(host={self.host!r}, container={self._describe_selector()!r})"

    # -- the protocol ------------------------------------------------------------------------------

    def current_version(self) -> str | None:
        with self._connect() as client:
            container = self._find(client)
            labels = container["Config"].get("Labels") or {}
            sha = labels.get(self._settings.sha_label)
            if not sha:
                image = self._image_attrs(client, container["Image"])
                sha = ((image.get("Config") or {}).get("Labels") or {}).get(self._settings.sha_label)
        return (str(sha).strip() or None) if sha else None

    def preflight(self) -> str:
        with self._connect() as client:
            version = self._call("reading the engine's version", lambda: client.version())
            container = self._find(client)
            images = self._call("listing images", lambda: client.api.images(quiet=True))
            info = self._call("reading the engine's registry settings", lambda: client.info())
        name = container["Name"].lstrip("/")
        state = container["State"].get("Status", "unknown")
        labels = container["Config"].get("Labels") or {}
        sha = labels.get(self._settings.sha_label)
        detail = (
            f"Docker {version.get('Version', '?')} at {self.host} is reachable; container {name} "
            f"({_short(container['Id'])}) is {state}" + (f", running {sha[:7]}" if sha else "")
        ) + f"; {len(images)} images listed"
        secure = sorted(h for h in self._insecure if not self._engine_allows_http(info, h))
        if secure:
            detail += f"; note: the engine will use HTTPS for {', '.join(secure)} (not in its insecure-registries)"
        return detail

    def deploy(self, request: DeployRequest) -> DeployResult:
        with self._connect() as client:
            old = self._find(client)
            name = old["Name"].lstrip("/")
            old_id = old["Id"]
            old_image = self._image_attrs(client, old["Image"])
            state = old.get("State") or {}
            was_running = bool(state.get("Running") or state.get("Restarting"))
            if was_running and request.digest in _digests(old_image):
                return DeployResult(
                    self.name,
                    skipped=True,
                    detail=f"container {name} ({_short(old_id)}) already runs {request.digest}: nothing to deploy",
                    link=f"docker container {_short(old_id)}",
                )
            pulled = self._pull(client, request)
            new_id = self._create(client, old, old_image, request)
            return self._switch(client, old, new_id, was_running, request, pulled)

    def finish(self, result: DeployResult) -> str | None:
        if result.skipped or not result.previous:
            return None
        previous = result.previous
        with self._connect() as client:
            try:
                attrs = client.api.inspect_container(previous)
            except NotFound:
                return f"the previous container {_short(previous)} was already removed"
            except _DOCKER_ERRORS as exc:
                raise self._error(f"inspecting the previous container {_short(previous)}", exc) from None
            name = attrs["Name"].lstrip("/")
            if (attrs.get("State") or {}).get("Running"):
                raise DeployError(
                    f"the previous container {name} ({_short(previous)}) is running again: it was not removed",
                    hint="someone started it after the rollback; stop and remove it by hand once the service is fine",
                )
            # v=False: its anonymous volumes now serve the new container.
            self._call(f"removing the previous container {name}", lambda: client.api.remove_container(previous))
        return f"removed the previous container {name} ({_short(previous)})"

    # -- connection and lookup ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        if self.host.startswith("unix://"):
            # Knock first: the SDK leaks its socket when a unix socket refuses the connection.
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as knock:
                    knock.settimeout(_CLIENT_TIMEOUT)
                    knock.connect(self.host.removeprefix("unix://"))
            except OSError as exc:
                raise DeployError(
                    f"cannot reach the Docker engine at {self.host} ({exc.strerror or type(exc).__name__})",
                    hint=self._unreachable_hint(),
                ) from None
        try:
            client = docker.DockerClient(base_url=self.host, timeout=_CLIENT_TIMEOUT, **self._env_kwargs)
        except _DOCKER_ERRORS as exc:
            raise DeployError(
                f"cannot reach the Docker engine at {self.host} ({self._reason(exc)})",
                hint=self._unreachable_hint(),
            ) from None
        try:
            yield client
        finally:
            client.close()

    def _unreachable_hint(self) -> str:
        where = "deploy.host in the configuration" if self._settings.host else "DOCKER_HOST"
        if self.host.startswith("unix://"):
            socket = self.host.removeprefix("unix://")
            return (
                f"nothing was changed; check that dockerd is running on that machine and that {socket} exists and "
                f"is readable by the user running the rollback (root or the docker group), or fix {where}"
            )
        return (
            "nothing was changed; check that dockerd listens on that address and port (and the TLS settings, "
            f"DOCKER_TLS_VERIFY / DOCKER_CERT_PATH), that no firewall is in the way, or fix {where}"
        )

    def _describe_selector(self) -> str:
        return self._settings.container or f"label {self._settings.label}"

    def _find(self, client: Any) -> dict[str, Any]:
        """The inspected container of the service, or DeployError naming what was found."""
        if self._settings.container is not None:
            return self._find_by_name(client, self._settings.container)
        return self._find_by_label(client, str(self._settings.label))

    def _find_by_name(self, client: Any, name: str) -> dict[str, Any]:
        """deploy.container: the container with that name, or DeployError saying there is none."""
        try:
            attrs: dict[str, Any] = client.api.inspect_container(name)
        except NotFound:
            raise DeployError(
                f"no container named {name!r} on the Docker engine at {self.host}",
                hint="check deploy.container in the configuration (`docker ps -a` on that engine lists them)",
            ) from None
        except _DOCKER_ERRORS as exc:
            raise self._error(f"looking up container {name}", exc) from None
        return attrs

    def _find_by_label(self, client: Any, label: str) -> dict[str, Any]:
        """deploy.label: the one container carrying it (running ones preferred), or DeployError listing them."""
        found = self._call(
            f"listing containers with label {label}",
            lambda: client.api.containers(all=True, filters={"label": label}),
        )
        found = _service_containers(found)
        running = [c for c in found if c.get("State") in ("running", "restarting")]
        chosen = running if running else found  # a crashed service (exited) can be rolled back too
        if len(chosen) != 1:
            raise DeployError(
                f"{len(chosen)} {'running ' if running else ''}containers have label {label} on the Docker engine "
                f"at {self.host}, expected exactly one: {_describe_containers(found)}",
                hint="make deploy.label select only the service's container, or use deploy.container (its name)",
            )
        container_id = str(chosen[0]["Id"])
        return dict(
            self._call(
                f"inspecting container {_short(container_id)}", lambda: client.api.inspect_container(container_id)
            )
        )

    def _image_attrs(self, client: Any, image_id: str) -> dict[str, Any]:
        """The inspected image (empty when it is gone: a container keeps running without its image)."""
        try:
            return dict(client.api.inspect_image(image_id))
        except NotFound:
            return {}
        except _DOCKER_ERRORS as exc:
            raise self._error(f"inspecting image {image_id}", exc) from None

    # -- pull ----------------------------------------------------------------------------------------

    def _auth(self, registry: str) -> dict[str, str] | None:
        for host in (registry, *(_HUB_ALIASES if registry in _HUB_ALIASES else ())):
            credentials = self._credentials.get(host)
            if credentials is not None:
                return {"username": credentials.username, "password": credentials.password}
        return None

    @staticmethod
    def _engine_allows_http(info: Mapping[str, Any], registry: str) -> bool:
        """Whether the engine talks plain HTTP to `registry` (insecure-registries, by name or CIDR)."""
        config = info.get("RegistryConfig") or {}
        index = (config.get("IndexConfigs") or {}).get(registry)
        if index is not None:
            return not index.get("Secure", True)
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
        host = host.strip("[]")
        if host == "localhost":
            host = "127.0.0.1"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        for cidr in config.get("InsecureRegistryCIDRs") or []:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(cidr, strict=False):
                    return True
        return False

    def _pull(self, client: Any, request: DeployRequest) -> str:
        """Pull the pinned image; say how it was obtained. Nothing on the engine changes but its images."""
        image = request.image
        if "@" not in image:
            raise DeployError(
                f"image {image} is not pinned by digest",
                hint="the deploy takes registry/name@sha256:...; this is a bug in the caller",
            )
        registry = _registry_host(image)
        repository, _, digest = image.rpartition("@")
        log.info("pulling %s on %s", image, self.host)
        try:
            for line in client.api.pull(
                repository, tag=digest, stream=True, decode=True, auth_config=self._auth(registry)
            ):
                if isinstance(line, dict) and ("error" in line or "errorDetail" in line):
                    detail = (line.get("errorDetail") or {}).get("message") or line.get("error")
                    raise DockerException(str(detail))
        except _DOCKER_ERRORS as exc:
            reason = self._reason(exc)
            # A registry outage must not block a way back that is already on the machine: the digest
            # names the exact bytes, so a local copy is that image.
            with contextlib.suppress(*_DOCKER_ERRORS):
                if request.digest in _digests(client.api.inspect_image(image)):
                    return f"the registry could not be used ({reason}); the engine already had {request.digest}"
            raise DeployError(
                f"the Docker engine at {self.host} could not pull {image} ({reason})",
                hint=self._pull_hint(reason, registry) + "; nothing was changed",
            ) from None
        return f"pulled {image}"

    def _pull_hint(self, reason: str, registry: str) -> str:
        lowered = reason.lower()
        if "http response to https client" in lowered or (
            registry in self._insecure and ("https" in lowered or "tls" in lowered or "x509" in lowered)
        ):
            return (
                f"the engine uses HTTPS for {registry}: add it to insecure-registries in the engine's "
                "/etc/docker/daemon.json (and restart dockerd), or serve the registry over TLS"
            )
        if "unauthorized" in lowered or "denied" in lowered or "authentication required" in lowered:
            where = "are wrong or lack pull rights" if self._auth(registry) else "are missing"
            return (
                f"the credentials for {registry} {where}: set username/password under registries in the configuration"
            )
        if "not found" in lowered or "manifest unknown" in lowered:
            return f"the image is not (or no longer) in {registry}: check it was pushed and not deleted"
        return f"check that the engine can reach {registry} and that the image exists there"

    # -- create --------------------------------------------------------------------------------------

    def _create(self, client: Any, old: Mapping[str, Any], old_image: Mapping[str, Any], request: DeployRequest) -> str:
        """Create (not start) the new container with the old one's settings; nothing else changes."""
        name = old["Name"].lstrip("/")
        temp_name = f"{name}{NEW_SUFFIX}{request.digest.rpartition(':')[2][:12]}"
        self._remove_leftover(client, temp_name)
        kwargs = self._container_config(old, old_image, request)
        created = self._call(
            f"creating the new container for {request.sha[:7]}",
            lambda: client.api.create_container(request.image, name=temp_name, use_config_proxy=False, **kwargs),
        )
        new_id = str(created["Id"])
        try:
            for network, endpoint in self._extra_networks(old):
                self._call(
                    f"connecting the new container to network {network}",
                    functools.partial(client.api.connect_container_to_network, new_id, network, **endpoint),
                )
        except DeployError:
            with contextlib.suppress(*_DOCKER_ERRORS):
                client.api.remove_container(new_id, force=True)
            raise
        return new_id

    def _remove_leftover(self, client: Any, temp_name: str) -> None:
        """A new container left by an interrupted deploy (never started) is in the way: remove it."""
        try:
            leftover = client.api.inspect_container(temp_name)
        except NotFound:
            return
        except _DOCKER_ERRORS as exc:
            raise self._error(f"looking up {temp_name}", exc) from None
        if (leftover.get("State") or {}).get("Running"):
            raise DeployError(
                f"container {temp_name} is running: another deploy of this image may be in progress",
                hint="wait for it, or remove that container by hand, then run again",
            )
        self._call(f"removing the leftover {temp_name}", lambda: client.api.remove_container(leftover["Id"]))

    def _container_config(
        self, old: Mapping[str, Any], old_image: Mapping[str, Any], request: DeployRequest
    ) -> dict[str, Any]:
        """create_container() arguments reproducing the old container, with what the old image set left out.

        What the old container took from its image (env defaults, labels, command, user, working dir...)
        is left for the new image to set; what was set on the container is kept.
        """
        config: Mapping[str, Any] = old.get("Config") or {}
        image_config: Mapping[str, Any] = old_image.get("Config") or {}
        host_config = dict(old.get("HostConfig") or {})
        kwargs: dict[str, Any] = {
            "environment": _own_env(config, image_config),
            "labels": _own_labels(config, image_config) | {self._settings.sha_label: request.sha},
            "tty": bool(config.get("Tty")),
            "stdin_open": bool(config.get("OpenStdin")),
            "detach": not config.get("AttachStdout"),
            **_command(config, image_config),
            **_overrides(config, image_config),
            **_ports(config),
            **_identity(config, host_config, str(old["Id"])),
        }
        # Volumes: named volumes and binds are in HostConfig; anonymous ones (from VOLUME or `-v /path`)
        # would be created anew and empty, so the new container gets the old ones by name.
        host_config["Binds"] = list(host_config.get("Binds") or []) + self._anonymous_volumes(old, host_config)
        host_config["Links"] = _links(host_config.get("Links"))
        kwargs["host_config"] = host_config

        primary = self._primary_network(old)
        if primary is not None:
            network, endpoint = primary
            kwargs["networking_config"] = {"EndpointsConfig": {network: endpoint}}
        return kwargs

    @staticmethod
    def _anonymous_volumes(old: Mapping[str, Any], host_config: Mapping[str, Any]) -> list[str]:
        taken = {b.split(":")[1] for b in host_config.get("Binds") or [] if b.count(":") >= 1}
        taken |= {m.get("Target") for m in host_config.get("Mounts") or []}
        binds = []
        for mount in old.get("Mounts") or []:
            if mount.get("Type") == "volume" and mount.get("Name") and mount.get("Destination") not in taken:
                binds.append(f"{mount['Name']}:{mount['Destination']}" + ("" if mount.get("RW", True) else ":ro"))
        return binds

    @staticmethod
    def _endpoint(old_id: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        aliases = [a for a in settings.get("Aliases") or [] if a != _short(old_id)]
        endpoint: dict[str, Any] = {}
        if aliases:
            endpoint["Aliases"] = aliases
        if settings.get("IPAMConfig"):
            endpoint["IPAMConfig"] = settings["IPAMConfig"]
        if settings.get("Links"):
            endpoint["Links"] = _links(settings["Links"])
        if settings.get("DriverOpts"):
            endpoint["DriverOpts"] = settings["DriverOpts"]
        return endpoint

    def _primary_network(self, old: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        mode = str((old.get("HostConfig") or {}).get("NetworkMode") or "")
        networks = (old.get("NetworkSettings") or {}).get("Networks") or {}
        if mode in networks and mode not in ("host", "none", "default", "bridge"):
            return mode, self._endpoint(str(old["Id"]), networks[mode])
        return None

    def _extra_networks(self, old: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Networks the old container was connected to besides its network mode (connected after create)."""
        mode = str((old.get("HostConfig") or {}).get("NetworkMode") or "")
        networks = (old.get("NetworkSettings") or {}).get("Networks") or {}
        return [
            (network, _connect_kwargs(self._endpoint(str(old["Id"]), settings)))
            for network, settings in networks.items()
            if _is_extra_network(network, mode)
        ]

    # -- the swap ------------------------------------------------------------------------------------

    def _switch(
        self, client: Any, old: Mapping[str, Any], new_id: str, was_running: bool, request: DeployRequest, pulled: str
    ) -> DeployResult:
        name = old["Name"].lstrip("/")
        old_id = str(old["Id"])
        old_name = f"{name}{OLD_SUFFIX}{_short(old_id)}"
        policy = dict((old.get("HostConfig") or {}).get("RestartPolicy") or {})
        failure: str | None
        policy_changed = renamed = False
        try:
            if was_running:
                client.api.stop(old_id, timeout=self._settings.stop_timeout_seconds)
            if policy.get("Name") not in (None, "", "no"):
                # A stopped container with restart policy `always` would come back when dockerd restarts.
                client.api.update_container(old_id, restart_policy={"Name": "no", "MaximumRetryCount": 0})
                policy_changed = True
            client.api.rename(old_id, old_name)
            renamed = True
            client.api.rename(new_id, name)
            client.api.start(new_id)
            failure = self._wait_started(client, new_id)
        except _DOCKER_ERRORS as exc:
            failure = f"could not be put in place ({self._reason(exc)})"
        if failure is None:
            return DeployResult(
                self.name,
                skipped=False,
                detail=(
                    f"container {name} ({_short(new_id)}) runs {request.image} for {request.sha[:7]} ({pulled}); "
                    f"the previous container is kept stopped as {old_name} until the service is healthy"
                ),
                link=f"docker container {_short(new_id)}",
                previous=old_id,
            )
        logs = self._logs(client, new_id)
        # Undo in reverse: the new container out of the way, then the old one back as it was.
        undo: list[tuple[str, Callable[[], object]]] = [
            ("remove the new container", lambda: client.api.remove_container(new_id, force=True))
        ]
        if renamed:
            undo.append((f"rename {old_name} back to {name}", lambda: client.api.rename(old_id, name)))
        if policy_changed:
            undo.append(
                ("restore its restart policy", lambda: client.api.update_container(old_id, restart_policy=policy))
            )
        if was_running:
            undo.append((f"start {name} again", lambda: client.api.start(old_id)))
        problems = []
        for what, step in undo:
            try:
                step()
            except _DOCKER_ERRORS as exc:
                problems.append(f"could not {what} ({self._reason(exc)})")
        tail = (
            f"; last {_LOG_LINES} log lines of the new container:\n{logs}"
            if logs
            else "; the new container wrote no logs"
        )
        if problems:
            raise DeployError(
                f"the new container for {request.sha[:7]} {failure}, and putting the previous container back "
                f"failed: {'; '.join(problems)}",
                hint=f"by hand now: `docker rm -f {_short(new_id)}; docker rename {old_name} {name}; "
                f"docker start {name}`" + tail,
            )
        state = "restarted" if was_running else "left stopped as it was"
        raise DeployError(
            f"the new container for {request.sha[:7]} {failure}; the previous container {name} "
            f"({_short(old_id)}) was put back and {state}",
            hint=f"the service runs the version it ran before; fix the image of {request.sha[:7]} or choose "
            "another SHA" + tail,
        )

    def _wait_started(self, client: Any, container_id: str) -> str | None:
        """None once the container runs (settled, or healthy); else what went wrong."""
        watch = _StartWatch(self._settings.start_timeout_seconds)
        while True:
            attrs = client.api.inspect_container(container_id)
            state = attrs.get("State") or {}
            restarts = attrs.get("RestartCount") or 0
            failure = _start_failure(state, restarts)
            if failure is not None:
                return failure
            if restarts:
                failure = watch.restarted(restarts)
                if failure is not None:
                    return failure
                time.sleep(0.05)  # poll fast: the next exit is expected within moments
                continue
            up = watch.up(state)
            watch.report(state, up)
            if up:
                return None
            failure = watch.timed_out(state)
            if failure is not None:
                return failure
            time.sleep(0.1)

    def _logs(self, client: Any, container_id: str) -> str:
        try:
            raw = client.api.logs(container_id, stdout=True, stderr=True, tail=_LOG_LINES)
        except _DOCKER_ERRORS:
            return ""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        lines = [line.rstrip() for line in self._scrub(text).splitlines() if line.strip()]
        return "\n".join(f"    {line}" for line in lines[-_LOG_LINES:])

    # -- errors --------------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for credentials in self._credentials.values():
            if credentials.password:
                text = text.replace(credentials.password, "***")
        return text

    def _reason(self, exc: BaseException) -> str:
        cause = _os_error(exc)
        if cause is not None and not getattr(exc, "explanation", None):
            return cause  # "Connection refused", "No such file or directory", "Permission denied"...
        explanation = getattr(exc, "explanation", None)
        text = str(explanation) if explanation else str(exc)
        text = re.sub(r"\s+", " ", text).strip() or type(exc).__name__
        return self._scrub(text)[:500]

    def _error(self, what: str, exc: BaseException) -> DeployError:
        if isinstance(exc, RequestException) and getattr(exc, "response", None) is None:
            return DeployError(
                f"lost the Docker engine at {self.host} while {what} ({self._reason(exc)})",
                hint=self._unreachable_hint(),
            )
        return DeployError(
            f"the Docker engine at {self.host} refused {what}: {self._reason(exc)}",
            hint="see the engine's log (journalctl -u docker) for details",
        )

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except _DOCKER_ERRORS as exc:
            raise self._error(what, exc) from None
