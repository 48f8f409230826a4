"""A private Docker engine (Debian `docker.io`'s dockerd) for the sandbox and tests, and the service's images.

`DockerEngine` runs `/usr/sbin/dockerd` as root with everything of its own in one short temporary directory
(data root, exec root, pid file, `unix://.../docker.sock`, an empty daemon.json so /etc/docker is ignored),
no iptables and no default bridge: containers use the host network and listen on 127.0.0.1 only. It waits
until the engine answers a ping, and on exit removes its containers, stops dockerd (and its containerd),
unmounts what it left mounted and deletes the directory.

`build_service_image` builds the sandbox service's image for one commit with the classic builder
(`FROM scratch`, the static busybox, `httpd` serving `/health` on 127.0.0.1:$PORT), pushes it to a registry
as `<registry>/<repository>:<sha>` and returns the pushed manifest digest.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException

from sandbox.process import LocalServer

DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"  # Debian busybox-static: one static binary, all a FROM-scratch image needs
DEFAULT_SERVICE_PORT = 8080
_MNT_DETACH = 2


class DockerEngineError(RuntimeError):
    """The sandbox Docker engine could not be started, or an image could not be built or pushed."""


def _short_tmpdir() -> Path:
    """A new private directory whose path is short: unix socket paths (ours and containerd's) max ~100 chars."""
    base = tempfile.gettempdir()
    if len(base) > 40:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="rbd-", dir=base))


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first (from /proc/self/mountinfo)."""
    found = []
    prefix = str(root)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = fields[4].encode().decode("unicode_escape")  # `\040` for a space, as the kernel writes it
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def _unmount(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.umount2(path.encode(), _MNT_DETACH)  # lazy: a mount still busy goes away once released


class DockerEngine(LocalServer):
    """A dockerd of our own for as long as the context lasts; `.host` is its `unix://` URL."""

    _error = DockerEngineError
    _name = "dockerd"
    _title = "the Docker engine"
    _log_name = "dockerd.log"
    _log_limit = 3000
    _log_full_limit = 50000
    _log_keeps_head = False
    _stop_timeout = 20.0
    _kill_timeout = 10.0

    def __init__(
        self,
        *,
        insecure_registries: Sequence[str] = ("127.0.0.0/8",),
        storage_driver: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self._insecure = list(insecure_registries)
        self._storage_driver = storage_driver

    def __repr__(self) -> str:
        return f"DockerEngine(host={self.host!r})"

    @property
    def host(self) -> str:
        """`unix:///tmp/rbd-.../docker.sock`: what DOCKER_HOST or `deploy.host` would be set to."""
        return f"unix://{self.root / 'docker.sock'}"

    def client(self, timeout: float = 60.0) -> Any:
        """A `docker.DockerClient` for this engine; the caller closes it."""
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def _preflight(self) -> None:
        self._require(DOCKERD, "docker.io")
        if os.geteuid() != 0:
            raise DockerEngineError("dockerd needs root: run the sandbox Docker engine as root")

    def _make_root(self) -> Path:
        return _short_tmpdir()

    def _start(self) -> None:
        root = self.root
        # Our own (empty) daemon.json: settings in /etc/docker/daemon.json must not leak into the sandbox.
        (root / "daemon.json").write_text("{}\n")
        command = [
            DOCKERD,
            f"--config-file={root / 'daemon.json'}",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'x'}",
            f"--pidfile={root / 'docker.pid'}",
            f"--host=unix://{root / 'docker.sock'}",
            # No NAT rules and no docker0 bridge: nothing touches the host's firewall or networks;
            # containers run with network_mode="host" and listen on 127.0.0.1.
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--shutdown-timeout=5",
            "--log-level=warn",
        ]
        command += [f"--insecure-registry={registry}" for registry in self._insecure]
        if self._storage_driver:
            command.append(f"--storage-driver={self._storage_driver}")
        # The registries are on 127.0.0.1: a proxy in the environment must not be asked for them.
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        # start_new_session: a Ctrl-C in the terminal is for pytest; we stop dockerd ourselves.
        self._spawn(command, env=env, start_new_session=True)
        self._wait_until(self._answers, self._startup_timeout, f"did not answer on {self.host}", interval=0.1)

    def _answers(self) -> bool:
        """Whether the engine's socket exists and it answers a ping."""
        if not (self.root / "docker.sock").exists():
            return False
        try:
            client = docker.DockerClient(base_url=self.host, version="1.41", timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (DockerException, RequestException):
            return False

    def remove_all_containers(self) -> None:
        """Kill and remove every container of this engine (between tests, and before stopping)."""
        with contextlib.closing(self.client(timeout=30)) as client:
            for container in client.containers.list(all=True):
                with contextlib.suppress(DockerException):
                    container.remove(force=True, v=True)

    def _stop_process(self) -> None:
        started = self._process is not None
        super()._stop_process()
        if not started:
            return
        # dockerd stops the containerd it started; if dockerd had to be killed, containerd may be left.
        pidfile = self.root / "x" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)

    def stop(self) -> None:
        """Remove the containers, stop dockerd, unmount and delete the temporary directory."""
        if self._tmp is None:
            return
        try:
            if self._process is not None and self._process.poll() is None:
                with contextlib.suppress(DockerException, RequestException):
                    self.remove_all_containers()  # fast: no container waits for its stop timeout
            self._stop_process()
        finally:
            for point in _mounts_under(self._tmp):  # e.g. <exec-root>/netns/default, overlay mounts
                _unmount(point)
            super().stop()  # closes the log and deletes the directory


def _is_static(path: str) -> bool:
    """Whether an x86-64/arm64 ELF executable has no program interpreter (PT_INTERP): it runs FROM scratch."""
    with open(path, "rb") as file:
        header = file.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
            return False
        order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
        phoff = int.from_bytes(header[32:40], order)
        phentsize = int.from_bytes(header[54:56], order)
        phnum = int.from_bytes(header[56:58], order)
        file.seek(phoff)
        table = file.read(phentsize * phnum)
    return all(int.from_bytes(table[i : i + 4], order) != 3 for i in range(0, len(table), phentsize))


def _dockerfile(sha: str, *, crash: bool, healthcheck: bool, port: int) -> str:
    lines = [
        "FROM scratch",
        f"COPY busybox {BUSYBOX}",
        "COPY www /www",
        f"ENV PORT={port}",
        f"LABEL org.opencontainers.image.revision={sha} org.opencontainers.image.title=shop",
        f'ENTRYPOINT ["{BUSYBOX}", "sh", "-c"]',
    ]
    if crash:
        # Starts, says why it cannot run, exits: what a deploy must notice and undo.
        lines.append(f"CMD [\"echo starting shop {sha[:7]}; echo 'panic: cannot connect to database' >&2; exit 3\"]")
    else:
        lines.append(f'CMD ["exec {BUSYBOX} httpd -f -p 127.0.0.1:$PORT -h /www"]')
    if healthcheck:
        probe = f"{BUSYBOX} wget -q -O /dev/null http://127.0.0.1:$PORT/health"
        lines.append(f'HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD ["{BUSYBOX}", "sh", "-c", "{probe}"]')
    return "\n".join(lines) + "\n"


def _stream_errors(lines: Iterator[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """Read a Docker JSON progress stream to its end; raise on an `error` line."""
    seen = []
    for line in lines:
        if "error" in line or "errorDetail" in line:
            detail = line.get("errorDetail", {}).get("message") or line.get("error")
            raise DockerEngineError(f"{what}: {detail}")
        seen.append(line)
    return seen


def build_service_image(
    engine: DockerEngine,
    registry_host: str,
    repository: str,
    sha: str,
    *,
    broken: bool = False,
    crash: bool = False,
    healthcheck: bool = True,
    port: int = DEFAULT_SERVICE_PORT,
    auth: Mapping[str, str] | None = None,
) -> str:
    """Build the service's image for `sha`, push it as `registry_host/repository:sha`, return the digest.

    The container serves `/` and `/health` (`{"status":"ok","version":"<sha>"}`) on 127.0.0.1:$PORT
    (default `port`; set PORT in the container's environment to move it). `broken`: no health file, so
    `/health` answers 404. `crash`: the container prints a panic and exits 3 at once. The image carries
    the label `org.opencontainers.image.revision=<sha>` and, with `healthcheck`, a Docker HEALTHCHECK.
    Run its containers with `network_mode="host"` and `init=True` (busybox as PID 1 ignores SIGTERM).
    `auth`: {"username": ..., "password": ...} for a registry that wants them for a push.
    """
    if not Path(BUSYBOX).exists() or not _is_static(BUSYBOX):
        raise DockerEngineError(
            f"{BUSYBOX} is missing or not statically linked (an image FROM scratch has no libc): "
            "apt-get install busybox-static"
        )
    reference = f"{registry_host}/{repository}"
    context = Path(tempfile.mkdtemp(prefix="build-", dir=engine.root))
    try:
        shutil.copy2(BUSYBOX, context / "busybox")
        www = context / "www"
        www.mkdir()
        (www / "index.html").write_text(f"shop {sha}\n")
        if not broken:
            (www / "health").write_text(json.dumps({"status": "ok", "version": sha}, separators=(",", ":")) + "\n")
        (context / "Dockerfile").write_text(_dockerfile(sha, crash=crash, healthcheck=healthcheck, port=port))
        with contextlib.closing(engine.client(timeout=120)) as client:
            # The Engine API's /build is the classic builder (what DOCKER_BUILDKIT=0 selects in the CLI).
            try:
                client.images.build(path=str(context), tag=f"{reference}:{sha}", rm=True, forcerm=True)
            except DockerException as exc:
                raise DockerEngineError(f"building {reference}:{sha} failed: {exc}") from exc
            pushed = _stream_errors(
                client.api.push(reference, tag=sha, stream=True, decode=True, auth_config=dict(auth) if auth else None),
                f"pushing {reference}:{sha}",
            )
    finally:
        shutil.rmtree(context, ignore_errors=True)
    digests = [
        line["aux"]["Digest"] for line in pushed if isinstance(line.get("aux"), dict) and "Digest" in line["aux"]
    ]
    if not digests:
        raise DockerEngineError(f"pushing {reference}:{sha}: the engine reported no digest")
    return str(digests[-1])
