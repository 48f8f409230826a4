"""A real Distribution registry (Debian `docker-registry`) for sandbox and tests, plus an image pusher.

`RegistryServer` runs `/usr/bin/docker-registry serve config.yml` on a free 127.0.0.1 port with filesystem
storage in a temporary directory, in one of three auth modes: "open", "htpasswd" or "token".
`push_image` uploads a tiny but valid image (config blob, one layer, manifest, or an OCI index / Docker
manifest list over one manifest per platform) through the registry API and returns the manifest digest;
`delete_tag` deletes the manifest a tag points to.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx

from sandbox.process import LocalServer

DOCKER_REGISTRY = "/usr/bin/docker-registry"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

Mode = Literal["open", "htpasswd", "token"]
ImageKind = Literal["oci-manifest", "docker-v2", "oci-index", "docker-list"]
_KINDS = ("oci-manifest", "docker-v2", "oci-index", "docker-list")


class SandboxRegistryError(RuntimeError):
    """The sandbox registry could not be started or refused an upload."""


def _htpasswd_line(user: str, password: str) -> str:
    """One `user:bcrypt-hash` line; Distribution accepts bcrypt hashes only."""
    try:
        import bcrypt
    except ImportError:
        htpasswd = shutil.which("htpasswd")
        if htpasswd is None:
            raise SandboxRegistryError(
                "cannot write the htpasswd file: neither the bcrypt module nor htpasswd is available: "
                "pip install bcrypt, or apt-get install apache2-utils"
            ) from None
        # -i reads the password from stdin so it never shows up in the process list.
        out = subprocess.run(
            [htpasswd, "-niB", "-C", "4", user], input=password, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    # Cost 4 (the minimum) keeps the sandbox fast; these are throwaway test users.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}"


class RegistryServer(LocalServer):
    """A Distribution registry process on 127.0.0.1 for as long as the context lasts."""

    _error = SandboxRegistryError
    _name = "docker-registry"
    _title = "the registry"
    _tmp_prefix = "runbook-registry-"
    _log_name = "registry.log"

    def __init__(
        self,
        mode: Mode = "open",
        *,
        users: Mapping[str, str] | None = None,
        realm: str | None = None,
        issuer: str | None = None,
        service: str | None = None,
        rootcertbundle: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        if mode not in ("open", "htpasswd", "token"):
            raise ValueError(f"unknown registry mode {mode!r}: use 'open', 'htpasswd' or 'token'")
        if mode == "htpasswd" and not users:
            raise ValueError("mode='htpasswd' needs users={'name': 'password'}")
        if mode == "token" and not (realm and issuer and service and rootcertbundle):
            raise ValueError("mode='token' needs realm=, issuer=, service= and rootcertbundle=")
        super().__init__(startup_timeout=startup_timeout)
        self.mode: Mode = mode
        self._users = dict(users or {})
        self._realm = realm
        self._issuer = issuer
        self._service = service
        self._rootcertbundle = str(rootcertbundle) if rootcertbundle is not None else None
        self.port = 0

    def __repr__(self) -> str:
        return f"RegistryServer(mode={self.mode!r}, host={self.host!r})"

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://{self.host}"

    def _config(self, port: int) -> dict[str, Any]:
        """The registry configuration for this mode (JSON is valid YAML, which the registry reads)."""
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "accesslog": {"disabled": True}, "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.mode == "htpasswd":
            path = self.root / "htpasswd"
            path.write_text("".join(_htpasswd_line(u, p) + "\n" for u, p in self._users.items()))
            config["auth"] = {"htpasswd": {"realm": "runbook-sandbox", "path": str(path)}}
        elif self.mode == "token":
            config["auth"] = {
                "token": {
                    "realm": self._realm,
                    "service": self._service,
                    "issuer": self._issuer,
                    "rootcertbundle": self._rootcertbundle,
                }
            }
        return config

    def _preflight(self) -> None:
        self._require(DOCKER_REGISTRY, "docker-registry (Distribution 2.8)")

    def _start(self) -> None:
        """Write the config, start the registry and wait until `/v2/` answers."""
        self._start_on_free_port(self._start_once)

    def _start_once(self, port: int) -> None:
        config_path = self.root / "config.yml"
        config_path.write_text(json.dumps(self._config(port), indent=2))
        # REGISTRY_* variables would override the config file; keep the environment out of it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self._spawn([DOCKER_REGISTRY, "serve", str(config_path)], env=env)
        self.port = port
        self._wait_for_http(f"{self.base_url}/v2/", f"did not answer on {self.base_url}/v2/", any_status=True)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check(response: httpx.Response, expected: int, what: str) -> None:
    if response.status_code != expected:
        raise SandboxRegistryError(
            f"{what}: registry answered HTTP {response.status_code} (expected {expected}): {response.text[:500]}"
        )


def _upload_blob(client: httpx.Client, repository: str, data: bytes) -> str:
    """Monolithic upload: POST an upload session, then PUT the bytes to its Location with ?digest=."""
    digest = _digest(data)
    started = client.post(f"/v2/{repository}/blobs/uploads/")
    _check(started, 202, f"starting a blob upload to {repository}")
    location = started.headers.get("Location")
    if not location:
        raise SandboxRegistryError(f"blob upload to {repository}: the registry sent no Location header")
    url = client.base_url.join(location).copy_merge_params({"digest": digest})
    done = client.put(url, content=data, headers={"Content-Type": "application/octet-stream"})
    _check(done, 201, f"uploading blob {digest} to {repository}")
    return digest


def _put_manifest(client: httpx.Client, repository: str, reference: str, body: bytes, media_type: str) -> str:
    digest = _digest(body)
    response = client.put(f"/v2/{repository}/manifests/{reference}", content=body, headers={"Content-Type": media_type})
    _check(response, 201, f"putting manifest {repository}:{reference}")
    sent = response.headers.get("Docker-Content-Digest")
    if sent and sent != digest:
        raise SandboxRegistryError(f"registry stored {repository}:{reference} as {sent}, expected {digest}")
    return digest


def _platform(text: str) -> dict[str, str]:
    """`linux/arm64/v8` → {"os": "linux", "architecture": "arm64", "variant": "v8"} (as in an index entry)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform {text!r} is not os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8")
    platform = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        platform["variant"] = parts[2]
    return platform


def _image_manifest(
    client: httpx.Client,
    repository: str,
    tag: str,
    payload: bytes,
    docker: bool,
    platform: Mapping[str, str] | None = None,
) -> tuple[bytes, str]:
    """Upload config and layer blobs; return the manifest bytes and its media type."""
    layer_digest = _upload_blob(client, repository, payload)
    platform = platform or {"architecture": "amd64", "os": "linux"}
    config = {
        **platform,
        "created": "2024-01-01T00:00:00Z",
        # The labels make each pushed tag a distinct image with a distinct digest.
        "config": {"Labels": {"org.opencontainers.image.ref.name": f"{repository}:{tag}"}},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "runbook sandbox push_image"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = _upload_blob(client, repository, config_bytes)
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": DOCKER_LAYER if docker else OCI_LAYER, "digest": layer_digest, "size": len(payload)}],
    }
    return json.dumps(manifest, indent=2).encode(), media_type


def push_image(
    base_url: str,
    repository: str,
    tag: str,
    *,
    auth: httpx.Auth | None = None,
    kind: ImageKind = "oci-manifest",
    payload: bytes = b"runbook sandbox layer\n",
    platforms: Sequence[str] = ("linux/amd64",),
) -> str:
    """Push a minimal image as `repository:tag` and return its manifest (or index) digest.

    kind: "oci-manifest", "docker-v2" (Docker image manifest v2 schema 2), "oci-index" (an OCI index) or
    "docker-list" (a Docker manifest list). An index or list points at one image manifest (OCI or Docker
    v2) per entry of `platforms` (`os/arch[/variant]`), each pushed first by digest; `unknown/unknown`
    makes an entry like buildx's attestation manifests.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown image kind {kind!r}: use one of {', '.join(_KINDS)}")
    docker = kind in ("docker-v2", "docker-list")
    with httpx.Client(base_url=base_url, auth=auth, timeout=10.0) as client:
        if kind in ("oci-manifest", "docker-v2"):
            body, media_type = _image_manifest(client, repository, tag, payload, docker=docker)
            return _put_manifest(client, repository, tag, body, media_type)
        if not platforms:
            raise ValueError("an index needs at least one platform")
        entries = []
        for text in platforms:
            platform = _platform(text)
            body, media_type = _image_manifest(client, repository, tag, payload, docker, platform)
            child = _put_manifest(client, repository, _digest(body), body, media_type)
            entry: dict[str, Any] = {"mediaType": media_type, "digest": child, "size": len(body), "platform": platform}
            if platform["os"] == "unknown":
                entry["annotations"] = {"vnd.docker.reference.type": "attestation-manifest"}
            entries.append(entry)
        index_type = DOCKER_LIST if docker else OCI_INDEX
        index = {"schemaVersion": 2, "mediaType": index_type, "manifests": entries}
        return _put_manifest(client, repository, tag, json.dumps(index, indent=2).encode(), index_type)


def delete_tag(base_url: str, repository: str, tag: str, *, auth: httpx.Auth | None = None) -> str:
    """Delete the manifest `repository:tag` points to (by digest, as the API requires); return that digest."""
    with httpx.Client(base_url=base_url, auth=auth, timeout=10.0) as client:
        head = client.head(f"/v2/{repository}/manifests/{tag}", headers={"Accept": _ACCEPT})
        _check(head, 200, f"looking up {repository}:{tag}")
        digest = str(head.headers.get("Docker-Content-Digest", ""))
        if not digest:
            raise SandboxRegistryError(f"{repository}:{tag}: the registry sent no Docker-Content-Digest")
        _check(client.delete(f"/v2/{repository}/manifests/{digest}"), 202, f"deleting {repository}@{digest}")
        return digest
