"""The container-registry client: does the image for a SHA exist, and what is its digest?

One `HEAD /v2/<name>/manifests/<tag>` per check (a HEAD does not count as a pull on Docker Hub), with the
Distribution token dance (Bearer challenge → token endpoint → retry) or HTTP Basic when a registry asks
for it. A Bearer token the registry refuses (`error="invalid_token"`, e.g. revoked or expired early) is
replaced once; a freshly fetched one that is refused is final. When a platform is required and the tag
is a multi-platform image (OCI index, Docker manifest list), the index is fetched by digest (a GET, which
Docker Hub counts as a pull: only then) and must list that platform. Wire facts:
sandbox/fixtures/oci/PROTOCOL.md. No credential or token ever goes into a message, log line,
exception or repr; messages name where the secret is configured (`secret_hint`), never its value.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import random
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from runbook.errors import ImageNotFoundError, RegistryError
from runbook.http import retry_after

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")

# OCI distribution-spec: repository name and tag grammar.
_NAME_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_SHA256_RE = re.compile(r"sha256:[a-f0-9]{64}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
_TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

_MAX_REDIRECTS = 5
_DEFAULT_TOKEN_SECONDS = 60
# Architecture spellings that name the same thing (containerd's platforms.Normalize does the same).
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}
_PLATFORM_PART = re.compile(r"[a-z0-9._-]+")


@dataclass(frozen=True)
class ImageRef:
    """An image reference split into registry host[:port], repository and tag (or digest)."""

    registry: str
    repository: str
    tag: str

    def __str__(self) -> str:
        host = "docker.io" if self.registry == DOCKER_HUB else self.registry
        separator = "@" if _DIGEST_RE.fullmatch(self.tag) else ":"
        return f"{host}/{self.repository}{separator}{self.tag}"


@dataclass(frozen=True)
class RegistryCredentials:
    """Username and password (or token) for one registry; the password never shows in a repr."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ManifestInfo:
    """What the registry holds under a reference: the manifest's digest, media type and size.

    `platforms` lists the `os/arch[/variant]` of a multi-platform image when its index was read (a
    platform was required, or the registry sent no digest on HEAD); empty when not known.
    """

    image: str
    digest: str
    media_type: str
    size: int | None
    platforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Platform:
    """`os/arch[/variant]`, compared the way container runtimes do (aliases, arm64 = arm64/v8)."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    def normalized(self) -> Platform:
        arch = _ARCH_ALIASES.get(self.architecture.lower(), self.architecture.lower())
        variant = self.variant.lower()
        if arch == "arm64" and variant == "v8":
            variant = ""
        return Platform(self.os.lower(), arch, variant)

    def satisfies(self, required: Platform) -> bool:
        """Whether an image for this platform is one for `required` (no variant required: any variant)."""
        have, want = self.normalized(), required.normalized()
        return (have.os, have.architecture) == (want.os, want.architecture) and (
            not want.variant or have.variant == want.variant
        )


def parse_platform(text: str) -> Platform:
    """`linux/amd64` or `linux/arm64/v8` → Platform; anything else is a RegistryError saying the format."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
        raise RegistryError(
            f"platform {text!r} is not os/arch[/variant]",
            hint="write it like linux/amd64 or linux/arm64/v8 (require_platform in the service's configuration)",
        )
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def index_platforms(body: bytes) -> list[Platform] | None:
    """The platforms an OCI index / Docker manifest list names, or None when `body` is not an index.

    Entries without a platform and buildx's attestation entries (`unknown/unknown`) are left out.
    """
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    manifests = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(manifests, list):
        return None
    found: list[Platform] = []
    for entry in manifests:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(platform, dict):
            continue
        os_name, arch = platform.get("os"), platform.get("architecture")
        variant = platform.get("variant") or ""
        if not isinstance(os_name, str) or not isinstance(arch, str) or not isinstance(variant, str):
            continue
        if (os_name, arch) == ("unknown", "unknown"):
            continue
        found.append(Platform(os_name, arch, variant))
    return found


@dataclass(frozen=True)
class Challenge:
    """One parsed `WWW-Authenticate` challenge: the scheme (lower case) and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def parse_image_ref(image: str, tag: str) -> ImageRef:
    """Split `ghcr.io/acme/shop`, `127.0.0.1:5000/shop`, `acme/shop` or `shop` and validate it with `tag`.

    The first path component is a registry when it holds a `.` or `:` or is `localhost`; otherwise the
    image lives on Docker Hub (`registry-1.docker.io`), where single names get the `library/` prefix.
    """
    image = image.strip()
    tag = tag.strip()
    _check_bare_image(image)
    registry, repository = _split_registry(image)
    _check_ref_parts(image, registry, repository, tag)
    return ImageRef(registry=registry, repository=repository, tag=tag)


def _check_bare_image(image: str) -> None:
    """Refuse an image name that is a URL or already carries a tag/digest (the tag comes from the SHA)."""
    if "://" in image:
        raise RegistryError(
            f"image name {image!r} contains a URL scheme",
            hint="give the image as host[:port]/repository, e.g. ghcr.io/acme/shop",
        )
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        raise RegistryError(
            f"image name {image!r} already carries a tag or digest",
            hint="give the image name without a tag (e.g. ghcr.io/acme/shop); the tag comes from the SHA",
        )


def _split_registry(image: str) -> tuple[str, str]:
    """(registry, repository) of an image name, Docker Hub spelled one way and its single names under library/."""
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, image
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return registry, repository


def _check_ref_parts(image: str, registry: str, repository: str, tag: str) -> None:
    """Validate host, repository and tag against the OCI distribution-spec grammar; say which part is wrong."""
    if not _HOST_RE.fullmatch(registry):
        raise RegistryError(
            f"registry host {registry!r} in image {image!r} is not a valid host[:port]",
            hint="give the image as host[:port]/repository, e.g. 127.0.0.1:5000/shop",
        )
    if not _NAME_RE.fullmatch(repository) or len(repository) > 255:
        raise RegistryError(
            f"repository name {repository!r} in image {image!r} is not valid",
            hint="use lower-case letters, digits and separators (. _ __ -) in '/'-separated components, e.g. acme/shop",
        )
    if not (_TAG_RE.fullmatch(tag) or _DIGEST_RE.fullmatch(tag)):
        raise RegistryError(
            f"tag {tag!r} for image {image!r} is not a valid tag",
            hint="a tag is 1-128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
        )


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` value into challenges; quoted values may hold commas and escapes."""
    challenges: list[Challenge] = []
    params: dict[str, str] = {}
    pos, end = 0, len(header)
    while pos < end:
        while pos < end and header[pos] in " \t,":
            pos += 1
        match = _TOKEN_CHARS.match(header, pos)
        if match is None:
            pos += 1  # a stray character: skip it rather than give up on the whole header
            continue
        word, pos = match.group(), match.end()
        after = pos
        while after < end and header[after] in " \t":
            after += 1
        if challenges and after < end and header[after] == "=":
            pos = after + 1
            while pos < end and header[pos] in " \t":
                pos += 1
            value, pos = _read_value(header, pos)
            params[word.lower()] = value
        else:
            params = {}
            challenges.append(Challenge(scheme=word.lower(), params=params))
    return challenges


def _read_value(header: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string (with backslash escapes) or a bare value up to the next comma."""
    end = len(header)
    if pos < end and header[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < end and header[pos] != '"':
            if header[pos] == "\\" and pos + 1 < end:
                pos += 1
            out.append(header[pos])
            pos += 1
        return "".join(out), pos + 1
    start = pos
    while pos < end and header[pos] not in ", \t":
        pos += 1
    return header[start:pos], pos


def parse_challenge(header: str) -> Challenge | None:
    """The first Bearer challenge of a `WWW-Authenticate` value, else the first challenge, else None."""
    challenges = parse_challenges(header)
    for challenge in challenges:
        if challenge.scheme == "bearer":
            return challenge
    return challenges[0] if challenges else None


def _split_host(hostport: str) -> str:
    """The host part of host[:port] (IPv6 in brackets allowed), lower case, without brackets."""
    if hostport.startswith("["):
        return hostport[1 : hostport.find("]")].lower()
    return hostport.rsplit(":", 1)[0].lower() if hostport.count(":") == 1 else hostport.lower()


def is_loopback(hostport: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without a port)."""
    host = _split_host(hostport)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """Checks manifests in OCI / Docker v2 registries over HTTP(S); use as a context manager or close()."""

    max_retry_after: float = 10.0
    """Longest Retry-After (seconds) the client honours before trying again."""
    max_backoff: float = 2.0
    """Longest pause between two attempts after a 5xx or a connection error."""

    def __init__(
        self,
        *,
        credentials: Mapping[str, RegistryCredentials] | None = None,
        insecure_registries: Collection[str] = (),
        timeout: float = 10.0,
        max_attempts: int = 3,
        transport: httpx.BaseTransport | None = None,
        secret_hint: Mapping[str, str] | None = None,
    ) -> None:
        """`secret_hint` maps a registry host (as configured) to where its password is configured, e.g.
        `{"ghcr.io": "environment variable GHCR_TOKEN"}`, so a refusal says which secret to check."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._credentials = dict(credentials or {})
        self._secret_hints = dict(secret_hint or {})
        self._insecure = frozenset(insecure_registries)
        self.max_attempts = max_attempts
        self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._challenges: dict[str, Challenge] = {}

    def __repr__(self) -> str:
        hosts = sorted(self._credentials)
        return f"RegistryClient(credentials_for={hosts!r}, insecure_registries={sorted(self._insecure)!r})"

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    # --- addressing -------------------------------------------------------------------------------

    def _is_insecure(self, hostport: str) -> bool:
        return is_loopback(hostport) or hostport in self._insecure or _split_host(hostport) in self._insecure

    def base_url(self, ref: ImageRef) -> str:
        """`http://host` for loopback or listed-insecure registries, `https://host` for all others."""
        scheme = "http" if self._is_insecure(ref.registry) else "https"
        return f"{scheme}://{ref.registry}"

    def _credentials_for(self, registry: str) -> RegistryCredentials | None:
        key = _configured_key(registry, self._credentials)
        return self._credentials[key] if key is not None else None

    def _check_credentials(self, registry: str) -> str:
        """`check the credentials in <where> (registries[<host>].password)`, or a generic line without a hint."""
        key = _configured_key(registry, self._secret_hints)
        if key is None:
            return f"check the username and password/token configured for {registry}"
        return f"check the credentials in {self._secret_hints[key]} (registries[{key}].password)"

    # --- the check --------------------------------------------------------------------------------

    def head_manifest(self, ref: ImageRef, *, require_platform: str | None = None) -> ManifestInfo:
        """Ask the registry for `ref`'s manifest (HEAD) and return its digest, media type and size.

        With `require_platform` (`linux/amd64`, `linux/arm64/v8`) and a multi-platform image, also GET the
        index by digest and check it has a manifest for that platform; a single-platform manifest is not
        checked (its platform sits in the config blob; `platforms` stays empty).

        Raises ImageNotFoundError when the registry has no such tag, RegistryError when it refuses the
        credentials, cannot be reached, or the image lacks the required platform.
        """
        wanted = parse_platform(require_platform) if require_platform is not None else None
        path = f"/v2/{ref.repository}/manifests/{ref.tag}"
        response = self._send_authorized("HEAD", ref, path)
        self._check_answer(ref, response, "the check", hint="check the registry URL and its status, then retry")
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        size = _content_length(response)
        digest = response.headers.get("Docker-Content-Digest", "").strip()
        body: bytes | None = None
        if not _DIGEST_RE.fullmatch(digest):
            digest, media_type, size, body = self._digest_by_get(ref, path, media_type, size)
        platforms = self._platforms(ref, digest, media_type, body, wanted)
        if wanted is not None and platforms is not None:
            _require_platform(ref, digest, wanted, platforms)
        log.debug("%s: digest %s, %s, %s bytes", ref, digest, media_type, size)
        return ManifestInfo(
            image=str(ref),
            digest=digest,
            media_type=media_type,
            size=size,
            platforms=tuple(str(p) for p in platforms or ()),
        )

    def _platforms(
        self, ref: ImageRef, digest: str, media_type: str, body: bytes | None, wanted: Platform | None
    ) -> list[Platform] | None:
        """The platforms of a multi-platform image, when worth knowing; None when not read or not an index.

        The index is read only when a platform is required or its bytes are already here (GET fallback):
        fetching it is a GET, which Docker Hub counts as a pull.
        """
        if media_type not in INDEX_MEDIA_TYPES:
            if wanted is not None:
                log.info("%s is a single-platform manifest (%s): platform %s not checked", ref, media_type, wanted)
            return None
        if wanted is None and body is None:
            return None
        if body is None:
            body = self._get_manifest(ref, digest)  # by digest: exactly the index HEAD described
        platforms = index_platforms(body)
        if platforms is None and wanted is not None:
            raise RegistryError(
                f"registry {ref.registry} sent a {media_type} for {ref} that is not a valid index",
                hint="the image was pushed broken or a proxy altered it; rebuild and push it again",
            )
        return platforms

    def _manifest_get(self, ref: ImageRef, path: str) -> httpx.Response:
        """GET a manifest; 404, 401/403 and other non-200 answers become the matching errors."""
        response = self._send_authorized("GET", ref, path)
        self._check_answer(ref, response, "the manifest GET", hint="check the registry's status, then retry")
        return response

    def _check_answer(self, ref: ImageRef, response: httpx.Response, request: str, *, hint: str) -> None:
        """A manifest request's answer other than 200 as its error: not found, access refused, or HTTP <status>.

        `request` names it in the message (`the check`: registry ... answered HTTP 502 to the check of <ref>).
        """
        status = response.status_code
        if status == 404:
            raise self._not_found(ref)
        if status in (401, 403):
            raise self._access_error(ref, status)
        if status != 200:
            raise RegistryError(f"registry {ref.registry} answered HTTP {status} to {request} of {ref}", hint=hint)

    def _get_manifest(self, ref: ImageRef, digest: str) -> bytes:
        """The exact bytes of manifest `digest` in `ref`'s repository, checked against that digest."""
        response = self._manifest_get(ref, f"/v2/{ref.repository}/manifests/{digest}")
        body = response.content
        if digest.startswith("sha256:") and "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryError(
                f"registry {ref.registry} sent a manifest for {ref} that does not hash to its digest {digest}",
                hint="the registry or a proxy in between altered the manifest; do not deploy it, investigate",
            )
        return body

    def _digest_by_get(
        self, ref: ImageRef, path: str, media_type: str, size: int | None
    ) -> tuple[str, str, int | None, bytes]:
        """HEAD gave no usable Docker-Content-Digest: GET the manifest and hash its exact bytes."""
        response = self._manifest_get(ref, path)
        body = response.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        sent = response.headers.get("Docker-Content-Digest", "").strip()
        if _SHA256_RE.fullmatch(sent) and sent != digest:
            raise RegistryError(
                f"registry {ref.registry} sent a manifest for {ref} whose sha256 ({digest}) differs from "
                f"its Docker-Content-Digest ({sent})",
                hint="the registry or a proxy in between altered the manifest; do not deploy it, investigate",
            )
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip() or media_type
        return digest, media_type, len(body) if body else size, body

    def _not_found(self, ref: ImageRef) -> ImageNotFoundError:
        """Say whether the tag or the whole repository is missing (a HEAD 404 carries no body).

        A manifest GET answers MANIFEST_UNKNOWN for both on Distribution 2.8, so ask the tag list, which
        answers NAME_UNKNOWN for a repository the registry does not know.
        """
        message = f"image {ref} not found in the registry"
        try:
            response = self._send_authorized("GET", ref, f"/v2/{ref.repository}/tags/list?n=1")
        except RegistryError:
            response = None
        if response is not None and response.status_code == 200:
            return ImageNotFoundError(
                message,
                hint=f"repository {ref.registry}/{ref.repository} exists but has no tag {ref.tag} "
                f"(MANIFEST_UNKNOWN): was the build for {ref.tag} pushed? Check the CI run that builds it "
                f"and that the tag format (short or full SHA, prefix) matches what CI pushes",
            )
        if response is not None and response.status_code == 404 and "NAME_UNKNOWN" in _error_codes(response):
            return ImageNotFoundError(
                message,
                hint=f"repository {ref.repository} does not exist on {ref.registry} (NAME_UNKNOWN): check "
                f"the image name in the configuration; was the build for {ref.tag} ever pushed there?",
            )
        return ImageNotFoundError(
            message,
            hint=f"was the build for {ref.tag} pushed? Is the tag format right (short or full SHA)? Is the "
            f"repository name {ref.repository} right, and may the configured account see it?",
        )

    def _access_error(self, ref: ImageRef, status: int) -> RegistryError:
        """Refused after authenticating: name the registry and the repository, never the credentials."""
        host = ref.registry
        has_credentials = self._credentials_for(host) is not None
        if status == 403:
            if has_credentials:
                hint = (
                    f"check the permissions of the account configured for {host} on {ref.repository} "
                    f"({self._check_credentials(host)})"
                )
            else:
                hint = f"check the permissions of anonymous access on {ref.repository}, or configure credentials "
                hint += "that may pull it"
            return RegistryError(f"registry {host} denied pull access to {ref.repository} (HTTP 403)", hint=hint)
        if has_credentials:
            return RegistryError(
                f"registry {host} refused the credentials configured for {host} when reading "
                f"{ref.repository} (HTTP 401)",
                hint=f"{self._check_credentials(host)} and that the account may pull {ref.repository}",
            )
        return RegistryError(
            f"registry {host} refused anonymous access to {ref.repository} (HTTP 401)",
            hint=f"no credentials are configured for {host}: the repository may be private (or may not "
            f"exist); configure credentials for {host}",
        )

    # --- authentication ---------------------------------------------------------------------------

    def _send_authorized(self, method: str, ref: ImageRef, path: str) -> httpx.Response:
        """Send with cached or preemptive auth; on a 401 answer the challenge once and send again."""
        url = f"{self.base_url(ref)}{path}"
        scope = f"repository:{ref.repository}:pull"
        headers = {"Accept": ACCEPT}
        authorization, fresh = self._known_authorization(ref, scope)
        response = self._send(method, url, {**headers, **authorization}, f"registry {ref.registry}")
        if response.status_code != 401 or fresh:
            return response
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return response
        if authorization:
            # A cached token refused (error="invalid_token": revoked, or expired before its expires_in):
            # fetch one new token and try once more; a fresh token refused is final.
            log.debug(
                "registry %s refused the cached authorization (%s); answering the challenge again",
                ref.registry,
                challenge.params.get("error", "no error given"),
            )
        self._challenges[ref.registry] = challenge
        answer = self._answer(ref, scope, challenge)
        if answer is None:
            return response
        return self._send(method, url, {**headers, **answer}, f"registry {ref.registry}")

    def _known_authorization(self, ref: ImageRef, scope: str) -> tuple[dict[str, str], bool]:
        """Authorization to send up front, and whether it is fresh (so a 401 to it is final)."""
        cached = self._tokens.get((ref.registry, scope))
        if cached is not None and cached[1] > time.monotonic():
            return {"Authorization": f"Bearer {cached[0]}"}, False
        challenge = self._challenges.get(ref.registry)
        if challenge is None:
            return {}, False
        answer = self._answer(ref, scope, challenge)
        return (answer, True) if answer is not None else ({}, False)

    def _answer(self, ref: ImageRef, scope: str, challenge: Challenge) -> dict[str, str] | None:
        """The Authorization header answering `challenge`, or None when there is nothing to answer with."""
        if challenge.scheme == "bearer":
            self._tokens.pop((ref.registry, scope), None)
            return {"Authorization": f"Bearer {self._fetch_token(ref, scope, challenge)}"}
        if challenge.scheme == "basic":
            credentials = self._credentials_for(ref.registry)
            if credentials is None:
                return None
            return {"Authorization": _basic_header(credentials)}
        log.debug("registry %s asks for unsupported auth scheme %s", ref.registry, challenge.scheme)
        return None

    def _fetch_token(self, ref: ImageRef, scope: str, challenge: Challenge) -> str:
        """Get a bearer token for `scope` from the challenge's realm (HTTP Basic if we have credentials)."""
        realm_url = _realm_url(ref, challenge)
        realm_host = realm_url.netloc.decode()
        what = f"token service {realm_host} of registry {ref.registry}"
        # The challenge's own scope may be a placeholder (ghcr.io's /v2/ probe): build ours from the name.
        params = {"scope": scope}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        headers = self._token_request_headers(ref, realm_url, what)
        url = str(realm_url.copy_merge_params(params))
        response = self._send("GET", url, headers, what)
        if response.status_code != 200:
            raise self._token_refused(ref, response.status_code, what, with_credentials="Authorization" in headers)
        token, seconds = _token_from(response, what)
        # Renew a little early so a token does not expire between cache lookup and use.
        self._tokens[(ref.registry, scope)] = (token, time.monotonic() + max(seconds - 5, seconds / 2))
        return token

    def _token_request_headers(self, ref: ImageRef, realm_url: httpx.URL, what: str) -> dict[str, str]:
        """Basic auth for the token request when credentials are configured; none (anonymous) otherwise.

        Credentials never go to a plain-http realm unless that host is loopback or listed as insecure.
        """
        credentials = self._credentials_for(ref.registry)
        if credentials is None:
            return {}
        realm_host = realm_url.netloc.decode()
        if realm_url.scheme != "https" and not self._is_insecure(realm_host):
            raise RegistryError(
                f"{what} uses plain http; refusing to send the credentials for {ref.registry} over it",
                hint=f"use an https realm, or list {realm_host} in insecure_registries if intended",
            )
        return {"Authorization": _basic_header(credentials)}

    def _token_refused(self, ref: ImageRef, status: int, what: str, *, with_credentials: bool) -> RegistryError:
        """The error for a token request answered other than 200: refused credentials, private repo, or failure."""
        if status in (401, 403) and with_credentials:
            return RegistryError(
                f"{what} refused the credentials configured for {ref.registry} (HTTP {status})",
                hint=f"{self._check_credentials(ref.registry)} and that the account may pull {ref.repository}",
            )
        if status in (401, 403):
            return RegistryError(
                f"{what} refused an anonymous token for {ref.repository} (HTTP {status})",
                hint=f"the repository may be private: configure credentials for {ref.registry}",
            )
        return RegistryError(
            f"{what} answered HTTP {status} to a token request",
            hint="check the registry's auth service status, then retry",
        )

    # --- transport --------------------------------------------------------------------------------

    def _send(self, method: str, url: str, headers: Mapping[str, str], what: str) -> httpx.Response:
        """Send with retries on 429, 5xx and connection errors (bounded backoff), following redirects."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._follow(method, url, headers)
            except httpx.TransportError as exc:
                if attempt >= self.max_attempts:
                    raise RegistryError(
                        f"{what} unreachable after {attempt} attempts: {type(exc).__name__}: {exc}",
                        hint="check the registry URL (host and port), the network and proxies, then retry",
                    ) from None
                log.info("%s: %s (attempt %d of %d)", what, type(exc).__name__, attempt, self.max_attempts)
                time.sleep(self._backoff(attempt))
                continue
            status = response.status_code
            if status != 429 and status < 500:
                return response
            if attempt >= self.max_attempts:
                if status == 429:
                    raise RegistryError(
                        f"{what} kept answering 429 Too Many Requests ({attempt} attempts)",
                        hint="the pull rate limit is exhausted: wait and retry, or use credentials with a higher limit",
                    )
                raise RegistryError(
                    f"{what} answered HTTP {status} ({attempt} attempts)",
                    hint="the registry is failing: check its status page and retry later",
                )
            pause = retry_after(response.headers.get("Retry-After"), self.max_retry_after)
            if pause is None:
                pause = self._backoff(attempt)
            log.info("%s answered HTTP %d; retrying in %.1f s", what, status, pause)
            time.sleep(pause)

    def _backoff(self, attempt: int) -> float:
        return float(min(0.25 * 2 ** (attempt - 1), self.max_backoff) + random.uniform(0, 0.05))

    def _follow(self, method: str, url: str, headers: Mapping[str, str]) -> httpx.Response:
        """One request, following redirects; Authorization is dropped when a redirect leaves the origin."""
        current = httpx.URL(url)
        origin = (current.scheme, current.host, current.port)
        sent = dict(headers)
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._client.request(method, current, headers=sent)
            location = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                return response
            current = current.join(location)
            if (current.scheme, current.host, current.port) != origin:
                sent.pop("Authorization", None)
            if response.status_code == 303 and method != "HEAD":
                method = "GET"
        raise RegistryError(
            f"registry redirected more than {_MAX_REDIRECTS} times starting from {url}",
            hint="check the registry URL; the registry or a proxy is redirecting in a loop",
        )


def _require_platform(ref: ImageRef, digest: str, wanted: Platform, platforms: list[Platform]) -> None:
    """ImageNotFoundError when none of the index's `platforms` runs on `wanted`."""
    if any(p.satisfies(wanted) for p in platforms):
        return
    present = ", ".join(str(p) for p in platforms) or "none"
    # Not found for the platform that runs it: the last-known-good search skips such a commit.
    raise ImageNotFoundError(
        f"image {ref} ({digest}) has no manifest for platform {wanted}; it has: {present}",
        hint=f"build and push {ref.tag} for {wanted} as well (add it to docker buildx build --platform), "
        "or correct require_platform in the service's configuration",
    )


def _realm_url(ref: ImageRef, challenge: Challenge) -> httpx.URL:
    """The Bearer challenge's realm as an http(s) URL with a host, else RegistryError."""
    realm = challenge.params.get("realm", "")
    realm_url = httpx.URL(realm) if realm else None
    if realm_url is None or realm_url.scheme not in ("http", "https") or not realm_url.host:
        raise RegistryError(
            f"registry {ref.registry} sent a Bearer challenge without a usable realm",
            hint="check that the registry URL points at a registry, and its auth configuration",
        )
    return realm_url


def _token_from(response: httpx.Response, what: str) -> tuple[str, float]:
    """The token of a token service's 200 answer and its lifetime in seconds (a default when not given)."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryError(
            f"{what} answered without a token",
            hint="check that the realm in the registry's challenge is a Distribution token service",
        )
    expires_in = body.get("expires_in")
    seconds = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 0.0
    return token, seconds or _DEFAULT_TOKEN_SECONDS


def _configured_key(registry: str, configured: Mapping[str, object]) -> str | None:
    """The key under which `registry` is configured (Docker Hub may be configured as docker.io)."""
    if registry in configured:
        return registry
    if registry == DOCKER_HUB:
        return next((alias for alias in _HUB_ALIASES if alias in configured), None)
    return None


def _basic_header(credentials: RegistryCredentials) -> str:
    """`Basic base64(user:password)` for an Authorization header."""
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _error_codes(response: httpx.Response) -> list[str]:
    """The `errors[].code` values of a registry error body (empty when the body is not one)."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [str(e.get("code")) for e in errors if isinstance(e, dict)]
