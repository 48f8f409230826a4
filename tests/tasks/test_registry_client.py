"""The registry client against a real Distribution 2.8 registry (open, htpasswd, token) and pure parsing."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import socket
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from runbook import registry as registry_module
from runbook.errors import ImageNotFoundError, RegistryError
from runbook.registry import (
    ACCEPT,
    DOCKER_HUB,
    MANIFEST_MEDIA_TYPES,
    ImageRef,
    RegistryClient,
    RegistryCredentials,
    parse_challenge,
    parse_challenges,
    parse_image_ref,
    parse_platform,
)
from sandbox.fixtures import load_fixture
from sandbox.registry import RegistryServer, SandboxRegistryError, delete_tag, push_image
from tests.support.token_server import ChallengeAuth, TokenServer

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = "ci-bot", "hunter2-Sup3r-s3cret"
WRONG_PASSWORD = "not-the-password-4711"
MEDIA = {
    "oci-manifest": "application/vnd.oci.image.manifest.v1+json",
    "docker-v2": "application/vnd.docker.distribution.manifest.v2+json",
    "oci-index": "application/vnd.oci.image.index.v1+json",
    "docker-list": "application/vnd.docker.distribution.manifest.list.v2+json",
}


# --- fixtures: one registry per mode for the whole module ------------------------------------------


@pytest.fixture(scope="module")
def open_registry() -> Iterator[RegistryServer]:
    with RegistryServer("open") as server:
        yield server


@pytest.fixture(scope="module")
def htpasswd_registry() -> Iterator[RegistryServer]:
    with RegistryServer("htpasswd", users={USER: PASSWORD}) as server:
        yield server


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    with TokenServer(users={USER: PASSWORD}, public={"public/shop"}) as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(token_server: TokenServer) -> Iterator[RegistryServer]:
    with RegistryServer(
        "token",
        realm=token_server.realm,
        issuer=token_server.issuer,
        service=token_server.service,
        rootcertbundle=token_server.rootcertbundle,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def token_images(token_server: TokenServer, token_registry: RegistryServer) -> dict[str, str]:
    auth = ChallengeAuth(USER, PASSWORD)
    return {
        "public": push_image(token_registry.base_url, "public/shop", "3f2a1bc", auth=auth),
        "private": push_image(token_registry.base_url, "private/shop", "3f2a1bc", auth=auth),
    }


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient() as c:
        yield c


def _ref(server: RegistryServer, repository: str, tag: str) -> ImageRef:
    return parse_image_ref(f"{server.host}/{repository}", tag)


# --- pure: names, challenges, URLs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "registry", "repository", "text"),
    [
        ("ghcr.io/acme/shop", "ghcr.io", "acme/shop", "ghcr.io/acme/shop:3f2a1bc"),
        ("acme/shop", DOCKER_HUB, "acme/shop", "docker.io/acme/shop:3f2a1bc"),
        ("shop", DOCKER_HUB, "library/shop", "docker.io/library/shop:3f2a1bc"),
        ("docker.io/nginx", DOCKER_HUB, "library/nginx", "docker.io/library/nginx:3f2a1bc"),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", "127.0.0.1:5000/a/b:3f2a1bc"),
        ("127.0.0.1:5000/shop", "127.0.0.1:5000", "shop", "127.0.0.1:5000/shop:3f2a1bc"),
        ("localhost/my-app", "localhost", "my-app", "localhost/my-app:3f2a1bc"),
        ("registry.example.com:443/team/svc.api_v2", "registry.example.com:443", "team/svc.api_v2", None),
    ],
)
def test_parse_image_ref(image: str, registry: str, repository: str, text: str | None) -> None:
    ref = parse_image_ref(image, "3f2a1bc")
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, "3f2a1bc")
    if text is not None:
        assert str(ref) == text


@pytest.mark.parametrize(
    ("image", "tag", "words"),
    [
        ("ghcr.io/Acme/shop", "v1", "repository name"),
        ("acme//shop", "v1", "repository name"),
        ("acme/shop-", "v1", "repository name"),
        ("ghcr.io/acme/shop:latest", "v1", "tag or digest"),
        ("ghcr.io/acme/shop@sha256:" + "a" * 64, "v1", "tag or digest"),
        ("https://ghcr.io/acme/shop", "v1", "scheme"),
        ("bad_host.io:99999x/shop", "v1", "host"),
        ("ghcr.io/acme/shop", "-v1", "tag"),
        ("ghcr.io/acme/shop", "a" * 129, "tag"),
        ("ghcr.io/acme/shop", "", "tag"),
    ],
)
def test_parse_image_ref_rejects_bad_names(image: str, tag: str, words: str) -> None:
    with pytest.raises(RegistryError, match=words) as info:
        parse_image_ref(image, tag)
    assert not isinstance(info.value, ImageNotFoundError)


def test_challenge_with_commas_inside_quoted_scope() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push",error="insufficient_scope"'
    )
    challenge = parse_challenge(header)
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:samalba/my-app:pull,push",
        "error": "insufficient_scope",
    }


def test_challenge_several_schemes_escapes_and_spaces() -> None:
    header = (
        'Basic realm="a \\"quoted\\" realm, with comma" , '
        'Bearer realm = "http://127.0.0.1:1/token", '
        'scope="repository:127.0.0.1:5000/x:pull,push", service=svc'
    )
    challenges = parse_challenges(header)
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].params == {"realm": 'a "quoted" realm, with comma'}
    assert challenges[1].params == {
        "realm": "http://127.0.0.1:1/token",
        "scope": "repository:127.0.0.1:5000/x:pull,push",
        "service": "svc",
    }
    picked = parse_challenge(header)
    assert picked is not None and picked.scheme == "bearer"
    assert parse_challenge("") is None


def test_base_url_is_http_only_for_loopback_or_listed_insecure() -> None:
    with RegistryClient(insecure_registries=["registry.lan:5000", "plain.internal"]) as c:

        def url(image: str) -> str:
            return c.base_url(parse_image_ref(image, "v1"))

        assert url("127.0.0.1:5000/shop") == "http://127.0.0.1:5000"
        assert url("127.8.9.10/shop") == "http://127.8.9.10"
        assert url("localhost:5000/shop") == "http://localhost:5000"
        assert url("[::1]:5000/shop") == "http://[::1]:5000"
        assert url("registry.lan:5000/shop") == "http://registry.lan:5000"
        assert url("plain.internal:8080/shop") == "http://plain.internal:8080"
        assert url("registry.lan:6000/shop") == "https://registry.lan:6000"
        assert url("ghcr.io/acme/shop") == "https://ghcr.io"
        assert url("shop") == f"https://{DOCKER_HUB}"
        assert url("128.0.0.1:5000/shop") == "https://128.0.0.1:5000"


def test_credentials_never_print() -> None:
    creds = RegistryCredentials(USER, PASSWORD)
    with RegistryClient(credentials={"127.0.0.1:5000": creds}) as c:
        for text in (repr(creds), str(creds), repr(c), str(c)):
            assert PASSWORD not in text
        assert USER in repr(creds)


# --- mocked transport: redirects, digest fallback, token scope ----------------------------------


def test_redirect_to_another_origin_drops_authorization() -> None:
    seen: list[tuple[int | None, str | None]] = []
    manifest = b'{"schemaVersion":2}'
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.port, request.headers.get("Authorization")))
        if request.url.port == 5000:
            if "Authorization" not in request.headers:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
            return httpx.Response(307, headers={"Location": "http://127.0.0.1:5001/blobs/x"})
        headers = {"Docker-Content-Digest": digest, "Content-Type": MEDIA["oci-manifest"]}
        return httpx.Response(200, headers={**headers, "Content-Length": str(len(manifest))})

    creds = {"127.0.0.1:5000": RegistryCredentials(USER, PASSWORD)}
    with RegistryClient(credentials=creds, transport=httpx.MockTransport(handler)) as c:
        info = c.head_manifest(parse_image_ref("127.0.0.1:5000/shop", "v1"))
    assert info.digest == digest
    assert info.size == len(manifest)
    assert seen[0] == (5000, None)
    assert seen[1][0] == 5000 and (seen[1][1] or "").startswith("Basic ")
    assert seen[2] == (5001, None)


def test_missing_digest_header_falls_back_to_get_and_sha256() -> None:
    body = b'{\n  "schemaVersion": 2,\n  "mediaType": "application/vnd.oci.image.index.v1+json"\n}'
    methods: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        assert request.headers["Accept"] == ACCEPT
        assert all(t in request.headers["Accept"] for t in MANIFEST_MEDIA_TYPES)
        headers = {"Content-Type": MEDIA["oci-index"] + "; charset=utf-8"}
        if request.method == "HEAD":
            return httpx.Response(200, headers={**headers, "Content-Length": str(len(body))})
        return httpx.Response(200, headers=headers, content=body)

    with RegistryClient(transport=httpx.MockTransport(handler)) as c:
        info = c.head_manifest(parse_image_ref("127.0.0.1:5000/shop", "v1"))
    assert methods == ["HEAD", "GET"]
    assert info.digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert info.media_type == MEDIA["oci-index"]
    assert info.size == len(body)


def test_bearer_scope_is_built_from_the_name_not_the_challenge() -> None:
    token_queries: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            token_queries.append(dict(request.url.params))
            return httpx.Response(200, json={"access_token": "opaque-token-value"})
        if request.headers.get("Authorization") != "Bearer opaque-token-value":
            challenge = 'Bearer realm="http://127.0.0.1:5001/token",service="svc",scope="repository:user/image:pull"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(404)

    transport = httpx.MockTransport(handler)
    with RegistryClient(transport=transport) as c, pytest.raises(ImageNotFoundError) as info:
        c.head_manifest(parse_image_ref("127.0.0.1:5000/acme/shop", "abc1234"))
    assert token_queries[0] == {"service": "svc", "scope": "repository:acme/shop:pull"}
    assert len(token_queries) == 1  # the follow-up tags/list GET reused the cached token
    assert "opaque-token-value" not in str(info.value)


def test_unreachable_registry_is_a_clear_registry_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with RegistryClient(max_attempts=2, timeout=2) as c, pytest.raises(RegistryError) as info:
        c.head_manifest(parse_image_ref(f"127.0.0.1:{port}/shop", "v1"))
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "unreachable" in message and "2 attempts" in message
    assert "check the registry URL" in message


# --- open registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["oci-manifest", "docker-v2", "oci-index", "docker-list"])
def test_open_found_with_pushed_digest_and_media_type(
    open_registry: RegistryServer, client: RegistryClient, kind: str
) -> None:
    tag = f"build-{kind}"
    pushed = push_image(open_registry.base_url, "shop", tag, kind=kind)  # type: ignore[arg-type]
    info = client.head_manifest(_ref(open_registry, "shop", tag))
    assert info.digest == pushed
    assert info.media_type == MEDIA[kind]
    assert info.image == f"{open_registry.host}/shop:{tag}"
    assert info.size is not None and info.size > 0


def test_open_missing_tag_names_image_and_tag(open_registry: RegistryServer, client: RegistryClient) -> None:
    push_image(open_registry.base_url, "shop", "present")
    with pytest.raises(ImageNotFoundError) as info:
        client.head_manifest(_ref(open_registry, "shop", "3f2a1bc"))
    message = str(info.value)
    assert f"image {open_registry.host}/shop:3f2a1bc not found" in message
    assert "was the build for 3f2a1bc pushed?" in message
    assert "has no tag 3f2a1bc" in message


def test_open_unknown_repository(open_registry: RegistryServer, client: RegistryClient) -> None:
    with pytest.raises(ImageNotFoundError) as info:
        client.head_manifest(_ref(open_registry, "no/such-repo", "3f2a1bc"))
    message = str(info.value)
    assert f"{open_registry.host}/no/such-repo:3f2a1bc" in message
    assert "does not exist" in message and "NAME_UNKNOWN" in message


def test_open_deleted_tag_is_not_found(open_registry: RegistryServer, client: RegistryClient) -> None:
    pushed = push_image(open_registry.base_url, "shop", "doomed", kind="docker-v2")
    ref = _ref(open_registry, "shop", "doomed")
    assert client.head_manifest(ref).digest == pushed
    assert delete_tag(open_registry.base_url, "shop", "doomed") == pushed
    with pytest.raises(ImageNotFoundError, match="doomed"):
        client.head_manifest(ref)


# --- htpasswd registry -----------------------------------------------------------------------------


def test_htpasswd_right_credentials(htpasswd_registry: RegistryServer) -> None:
    pushed = push_image(htpasswd_registry.base_url, "team/shop", "v1", auth=httpx.BasicAuth(USER, PASSWORD))
    creds = {htpasswd_registry.host: RegistryCredentials(USER, PASSWORD)}
    with RegistryClient(credentials=creds) as c:
        assert c.head_manifest(_ref(htpasswd_registry, "team/shop", "v1")).digest == pushed
        # Second check sends Basic up front (no new 401 round trip) and still works.
        assert c.head_manifest(_ref(htpasswd_registry, "team/shop", "v1")).digest == pushed
        with pytest.raises(ImageNotFoundError):
            c.head_manifest(_ref(htpasswd_registry, "team/shop", "v2"))


def test_htpasswd_without_credentials(htpasswd_registry: RegistryServer, client: RegistryClient) -> None:
    with pytest.raises(RegistryError) as info:
        client.head_manifest(_ref(htpasswd_registry, "team/shop", "v1"))
    assert not isinstance(info.value, ImageNotFoundError)
    assert "credentials" in str(info.value) and htpasswd_registry.host in str(info.value)


def test_htpasswd_wrong_password_never_leaks(
    htpasswd_registry: RegistryServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = RegistryCredentials(USER, WRONG_PASSWORD)
    with RegistryClient(credentials={htpasswd_registry.host: creds}) as c:
        with pytest.raises(RegistryError) as info:
            c.head_manifest(_ref(htpasswd_registry, "team/shop", "v1"))
        texts = [str(info.value), repr(info.value), info.value.hint, repr(c), repr(creds), caplog.text]
    assert not isinstance(info.value, ImageNotFoundError)
    assert "refused the credentials" in str(info.value)
    for text in texts:
        assert WRONG_PASSWORD not in text
        assert PASSWORD not in text


# --- token registry --------------------------------------------------------------------------------


def test_token_anonymous_public_pull(
    token_registry: RegistryServer, token_images: dict[str, str], client: RegistryClient
) -> None:
    info = client.head_manifest(_ref(token_registry, "public/shop", "3f2a1bc"))
    assert info.digest == token_images["public"]
    assert info.media_type == MEDIA["oci-manifest"]


def test_token_anonymous_private_is_refused(
    token_registry: RegistryServer, token_images: dict[str, str], client: RegistryClient
) -> None:
    with pytest.raises(RegistryError) as info:
        client.head_manifest(_ref(token_registry, "private/shop", "3f2a1bc"))
    assert not isinstance(info.value, ImageNotFoundError)
    assert "anonymous" in str(info.value) and "credentials" in str(info.value)


def test_token_basic_for_token_and_reuse(
    token_server: TokenServer,
    token_registry: RegistryServer,
    token_images: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = {token_registry.host: RegistryCredentials(USER, PASSWORD)}
    before = token_server.requests
    with RegistryClient(credentials=creds) as c:
        ref = _ref(token_registry, "private/shop", "3f2a1bc")
        assert c.head_manifest(ref).digest == token_images["private"]
        assert c.head_manifest(ref).digest == token_images["private"]
    assert token_server.requests - before == 1
    assert PASSWORD not in caplog.text


def test_token_access_token_only_answer(
    token_server: TokenServer, token_registry: RegistryServer, token_images: dict[str, str]
) -> None:
    token_server.access_token_only = True
    try:
        creds = {token_registry.host: RegistryCredentials(USER, PASSWORD)}
        with RegistryClient(credentials=creds) as c:
            info = c.head_manifest(_ref(token_registry, "private/shop", "3f2a1bc"))
    finally:
        token_server.access_token_only = False
    assert info.digest == token_images["private"]


def test_token_wrong_credentials(
    token_server: TokenServer, token_registry: RegistryServer, token_images: dict[str, str]
) -> None:
    refused = token_server.refused
    creds = RegistryCredentials(USER, WRONG_PASSWORD)
    with RegistryClient(credentials={token_registry.host: creds}) as c:
        with pytest.raises(RegistryError) as info:
            c.head_manifest(_ref(token_registry, "private/shop", "3f2a1bc"))
        texts = [str(info.value), repr(info.value), repr(c)]
    assert token_server.refused == refused + 1
    assert not isinstance(info.value, ImageNotFoundError)
    assert "refused the credentials" in str(info.value) and token_registry.host in str(info.value)
    assert all(WRONG_PASSWORD not in t for t in texts)


def test_token_missing_tag_is_not_found(token_registry: RegistryServer, token_images: dict[str, str]) -> None:
    creds = {token_registry.host: RegistryCredentials(USER, PASSWORD)}
    with (
        RegistryClient(credentials=creds) as c,
        pytest.raises(ImageNotFoundError, match="has no tag 0000000"),
    ):
        c.head_manifest(_ref(token_registry, "private/shop", "0000000"))


# --- retries through a flaky proxy in front of the real registry ---------------------------------


class FlakyProxy:
    """Answers the first requests with canned failures, then forwards to the real registry.

    `seen` holds the status of every answer, `requests` the (method, path, Authorization) of every request.
    """

    def __init__(self, upstream: RegistryServer, failures: list[tuple[int, dict[str, str]]]) -> None:
        self.failures = list(failures)
        self.seen: list[int] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.upstream_port = upstream.port
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                proxy.requests.append((self.command, self.path, self.headers.get("Authorization")))
                if proxy.failures:
                    status, headers = proxy.failures.pop(0)
                    proxy.seen.append(status)
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=5)
                try:
                    forwarded = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    upstream.request(self.command, self.path, headers=forwarded)
                    response = upstream.getresponse()
                    body = response.read()
                    proxy.seen.append(response.status)
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                            self.send_header(key, value)
                    length = response.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                finally:
                    upstream.close()

            do_HEAD = do_GET = _handle

        return Handler


def test_429_with_retry_after_then_found(open_registry: RegistryServer, client: RegistryClient) -> None:
    pushed = push_image(open_registry.base_url, "shop", "rate-limited")
    with FlakyProxy(open_registry, [(429, {"Retry-After": "1"})]) as proxy:
        started = time.monotonic()
        info = client.head_manifest(parse_image_ref(f"{proxy.host}/shop", "rate-limited"))
        elapsed = time.monotonic() - started
    assert info.digest == pushed
    assert proxy.seen == [429, 200]
    assert elapsed >= 0.9  # Retry-After honoured


def test_5xx_retried_then_found(open_registry: RegistryServer, client: RegistryClient) -> None:
    pushed = push_image(open_registry.base_url, "shop", "flaky")
    with FlakyProxy(open_registry, [(503, {}), (502, {})]) as proxy:
        info = client.head_manifest(parse_image_ref(f"{proxy.host}/shop", "flaky"))
    assert info.digest == pushed
    assert proxy.seen == [503, 502, 200]


def test_5xx_until_attempts_run_out(open_registry: RegistryServer) -> None:
    with FlakyProxy(open_registry, [(503, {})] * 5) as proxy:
        with RegistryClient(max_attempts=2) as c, pytest.raises(RegistryError) as info:
            c.head_manifest(parse_image_ref(f"{proxy.host}/shop", "flaky"))
        assert proxy.seen == [503, 503]
    assert not isinstance(info.value, ImageNotFoundError)
    assert "HTTP 503" in str(info.value) and proxy.host in str(info.value)


def test_429_until_attempts_run_out(open_registry: RegistryServer) -> None:
    with FlakyProxy(open_registry, [(429, {"Retry-After": "0"})] * 5) as proxy:
        with RegistryClient(max_attempts=3) as c, pytest.raises(RegistryError, match="429") as info:
            c.head_manifest(parse_image_ref(f"{proxy.host}/shop", "flaky"))
        assert proxy.seen == [429, 429, 429]
    assert "rate limit" in str(info.value)


# --- invalid_token: a cached token the registry stops accepting ------------------------------------


def _invalid_token(token_server: TokenServer, repository: str) -> tuple[int, dict[str, str]]:
    """The answer Distribution gives to a revoked or expired Bearer token."""
    challenge = (
        f'Bearer realm="{token_server.realm}",service="{token_server.service}",'
        f'scope="repository:{repository}:pull",error="invalid_token"'
    )
    return 401, {"WWW-Authenticate": challenge}


@pytest.mark.parametrize("repository", ["private/shop", "public/shop"])
def test_token_invalid_token_gets_one_new_token(
    token_server: TokenServer, token_registry: RegistryServer, token_images: dict[str, str], repository: str
) -> None:
    pushed = token_images[repository.split("/")[0]]
    with FlakyProxy(token_registry, []) as proxy:
        # Credentials for the private image; the public one is read anonymously.
        creds = {proxy.host: RegistryCredentials(USER, PASSWORD)} if repository.startswith("private") else {}
        ref = parse_image_ref(f"{proxy.host}/{repository}", "3f2a1bc")
        with RegistryClient(credentials=creds) as c:
            assert c.head_manifest(ref).digest == pushed
            assert proxy.seen == [401, 200]  # the registry's own challenge, then the token accepted
            first_token = proxy.requests[-1][2]
            before = token_server.requests
            proxy.failures.append(_invalid_token(token_server, repository))
            del proxy.seen[:], proxy.requests[:]
            assert c.head_manifest(ref).digest == pushed
    assert proxy.seen == [401, 200]
    assert token_server.requests - before == 1  # exactly one new token
    assert proxy.requests[0][2] == first_token  # the cached token was tried first...
    assert proxy.requests[1][2] not in (None, first_token)  # ...then a new one


def test_token_invalid_token_twice_is_final_and_names_the_secret(
    token_server: TokenServer, token_registry: RegistryServer, token_images: dict[str, str]
) -> None:
    with FlakyProxy(token_registry, []) as proxy:
        creds = {proxy.host: RegistryCredentials(USER, PASSWORD)}
        hint = {proxy.host: "environment variable REGISTRY_PASSWORD"}
        ref = parse_image_ref(f"{proxy.host}/private/shop", "3f2a1bc")
        with RegistryClient(credentials=creds, secret_hint=hint) as c:
            c.head_manifest(ref)
            before = token_server.requests
            proxy.failures += [_invalid_token(token_server, "private/shop")] * 3
            del proxy.seen[:]
            with pytest.raises(RegistryError) as info:
                c.head_manifest(ref)
    assert proxy.seen == [401, 401]  # cached token refused, new token refused: no loop
    assert token_server.requests - before == 1
    message = str(info.value)
    assert "refused the credentials" in message
    assert f"check the credentials in environment variable REGISTRY_PASSWORD (registries[{proxy.host}].password)" in (
        message
    )
    assert PASSWORD not in message and PASSWORD not in repr(info.value)


# --- secret_hint: a refusal says which secret to check -----------------------------------------------


def test_secret_hint_htpasswd_wrong_password(htpasswd_registry: RegistryServer) -> None:
    host = htpasswd_registry.host
    with RegistryClient(
        credentials={host: RegistryCredentials(USER, WRONG_PASSWORD)},
        secret_hint={host: "environment variable SANDBOX_REGISTRY_PASSWORD"},
    ) as c:
        with pytest.raises(RegistryError) as info:
            c.head_manifest(_ref(htpasswd_registry, "team/shop", "v1"))
        texts = [str(info.value), repr(info.value), repr(c)]
    assert (
        f"check the credentials in environment variable SANDBOX_REGISTRY_PASSWORD (registries[{host}].password)"
        in info.value.hint
    )
    assert all(WRONG_PASSWORD not in t and PASSWORD not in t for t in texts)


def test_secret_hint_from_the_configuration_names_the_key_once(
    htpasswd_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built from the configuration (as a run builds it): the secret's place and its key, each said once."""
    from runbook.config import parse_config
    from runbook.service_images import registry_client

    host = htpasswd_registry.host
    monkeypatch.setenv("SANDBOX_REGISTRY_PASSWORD", WRONG_PASSWORD)
    production = {
        "deploy": {"type": "webhook", "url": "http://127.0.0.1:9/deploys"},
        "health": {"probes": [{"url": "http://127.0.0.1:9/health"}]},
    }
    service = {"repository": "acme/shop", "image": f"{host}/team/shop", "environments": {"production": production}}
    config = parse_config(
        {
            "registries": [{"host": host, "username": USER, "password": {"env": "SANDBOX_REGISTRY_PASSWORD"}}],
            "services": {"shop": service},
        }
    )
    with registry_client(config) as c, pytest.raises(RegistryError) as info:
        c.head_manifest(_ref(htpasswd_registry, "team/shop", "v1"))
    hint = info.value.hint or ""
    assert f"check the credentials in environment variable SANDBOX_REGISTRY_PASSWORD (registries[{host}].password)" in (
        hint
    )
    assert hint.count("registries[") == 1, hint
    assert WRONG_PASSWORD not in str(info.value)


def test_secret_hint_token_service_refuses(
    token_server: TokenServer, token_registry: RegistryServer, token_images: dict[str, str]
) -> None:
    host = token_registry.host
    with (
        RegistryClient(
            credentials={host: RegistryCredentials(USER, WRONG_PASSWORD)},
            secret_hint={host: "Prefect Secret block 'registry-password'"},
        ) as c,
        pytest.raises(RegistryError) as info,
    ):
        c.head_manifest(_ref(token_registry, "private/shop", "3f2a1bc"))
    assert "token service" in info.value.message
    assert f"check the credentials in Prefect Secret block 'registry-password' (registries[{host}].password)" in (
        info.value.hint
    )
    assert WRONG_PASSWORD not in str(info.value)


# --- multi-platform images -------------------------------------------------------------------------

PLATFORMS = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7", "unknown/unknown"]


@pytest.mark.parametrize("kind", ["oci-index", "docker-list"])
def test_platform_present_in_index(open_registry: RegistryServer, kind: str) -> None:
    tag = f"multi-{kind}"
    pushed = push_image(open_registry.base_url, "multi", tag, kind=kind, platforms=PLATFORMS)  # type: ignore[arg-type]
    with FlakyProxy(open_registry, []) as proxy, RegistryClient() as c:
        ref = parse_image_ref(f"{proxy.host}/multi", tag)
        info = c.head_manifest(ref)
        assert [r[0] for r in proxy.requests] == ["HEAD"]  # no platform asked: no GET (a pull on Docker Hub)
        assert (info.digest, info.media_type, info.platforms) == (pushed, MEDIA[kind], ())
        for wanted in ("linux/amd64", "linux/arm64", "linux/arm64/v8", "linux/aarch64", "linux/arm", "Linux/ARM/v7"):
            del proxy.requests[:]
            info = c.head_manifest(ref, require_platform=wanted)
            assert info.digest == pushed and info.media_type == MEDIA[kind]
            assert info.platforms == ("linux/amd64", "linux/arm64/v8", "linux/arm/v7")  # attestation left out
            assert [(m, p) for m, p, _ in proxy.requests] == [
                ("HEAD", f"/v2/multi/manifests/{tag}"),
                ("GET", f"/v2/multi/manifests/{pushed}"),  # by digest: the very index HEAD described
            ]


@pytest.mark.parametrize("kind", ["oci-index", "docker-list"])
def test_platform_missing_lists_the_platforms_present(
    open_registry: RegistryServer, client: RegistryClient, kind: str
) -> None:
    tag = f"two-{kind}"
    platforms = ["linux/amd64", "linux/arm/v7"]
    pushed = push_image(open_registry.base_url, "multi", tag, kind=kind, platforms=platforms)  # type: ignore[arg-type]
    ref = _ref(open_registry, "multi", tag)
    for wanted in ("linux/arm64", "linux/arm/v6", "windows/amd64", "linux/amd64/v3"):
        # Not found for the platform that runs it: the last-known-good search skips such a commit.
        with pytest.raises(ImageNotFoundError) as info:
            client.head_manifest(ref, require_platform=wanted)
        message = str(info.value)
        assert f"no manifest for platform {wanted}" in message and "it has: linux/amd64, linux/arm/v7" in message
        assert pushed in message and str(ref) in message


def test_platform_default_oci_index_is_linux_amd64_only(open_registry: RegistryServer, client: RegistryClient) -> None:
    push_image(open_registry.base_url, "multi", "amd64-only", kind="oci-index")
    ref = _ref(open_registry, "multi", "amd64-only")
    assert client.head_manifest(ref, require_platform="linux/amd64").platforms == ("linux/amd64",)
    with pytest.raises(RegistryError, match="it has: linux/amd64: build"):
        client.head_manifest(ref, require_platform="linux/arm64")


@pytest.mark.parametrize("kind", ["oci-manifest", "docker-v2"])
def test_platform_single_manifest_is_not_fetched(
    open_registry: RegistryServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runbook.registry")
    pushed = push_image(open_registry.base_url, "multi", f"single-{kind}", kind=kind)  # type: ignore[arg-type]
    with FlakyProxy(open_registry, []) as proxy, RegistryClient() as c:
        info = c.head_manifest(parse_image_ref(f"{proxy.host}/multi", f"single-{kind}"), require_platform="linux/arm64")
    assert (info.digest, info.platforms) == (pushed, ())
    assert [r[0] for r in proxy.requests] == ["HEAD"]
    assert "not checked" in caplog.text


def test_platform_check_through_token_auth(
    token_server: TokenServer, token_registry: RegistryServer, token_images: dict[str, str]
) -> None:
    auth = ChallengeAuth(USER, PASSWORD)
    pushed = push_image(
        token_registry.base_url, "private/multi", "v1", auth=auth, kind="docker-list", platforms=PLATFORMS
    )
    before = token_server.requests
    with RegistryClient(credentials={token_registry.host: RegistryCredentials(USER, PASSWORD)}) as c:
        info = c.head_manifest(_ref(token_registry, "private/multi", "v1"), require_platform="linux/arm64")
    assert info.digest == pushed and "linux/arm64/v8" in info.platforms
    assert token_server.requests - before == 1  # the GET reused the HEAD's token


@pytest.mark.parametrize("platform", ["amd64", "linux", "linux/amd64/v3/extra", "linux//v8", "linux/amd 64", ""])
def test_bad_platform_is_refused_before_any_request(platform: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request expected, got {request.method} {request.url}")

    with RegistryClient(transport=httpx.MockTransport(handler)) as c, pytest.raises(RegistryError) as info:
        c.head_manifest(parse_image_ref("127.0.0.1:5000/shop", "v1"), require_platform=platform)
    assert "os/arch[/variant]" in str(info.value) and "linux/amd64" in str(info.value)


def _index(*platforms: dict[str, str]) -> bytes:
    manifests = [
        {"mediaType": MEDIA["oci-manifest"], "digest": "sha256:" + f"{i}" * 64, "size": 100, "platform": p}
        for i, p in enumerate(platforms)
    ]
    return json.dumps({"schemaVersion": 2, "mediaType": MEDIA["oci-index"], "manifests": manifests}).encode()


def test_platform_from_the_digest_fallback_get_needs_no_second_get() -> None:
    body = _index({"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "s390x"})
    methods: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        headers = {"Content-Type": MEDIA["oci-index"]}  # no Docker-Content-Digest: an old registry
        return httpx.Response(200, headers=headers, content=b"" if request.method == "HEAD" else body)

    with RegistryClient(transport=httpx.MockTransport(handler)) as c:
        ref = parse_image_ref("127.0.0.1:5000/shop", "v1")
        assert c.head_manifest(ref).platforms == ("linux/amd64", "linux/s390x")  # read anyway: known
        del methods[:]
        info = c.head_manifest(ref, require_platform="linux/s390x")
    assert methods == ["HEAD", "GET"]
    assert info.digest == "sha256:" + hashlib.sha256(body).hexdigest()


def test_platform_index_altered_in_transit_is_refused() -> None:
    body = _index({"os": "linux", "architecture": "amd64"})
    announced = "sha256:" + hashlib.sha256(b"another index").hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": MEDIA["oci-index"], "Docker-Content-Digest": announced}
        return httpx.Response(200, headers=headers, content=b"" if request.method == "HEAD" else body)

    with RegistryClient(transport=httpx.MockTransport(handler)) as c, pytest.raises(RegistryError) as info:
        c.head_manifest(parse_image_ref("127.0.0.1:5000/shop", "v1"), require_platform="linux/amd64")
    assert "does not hash to its digest" in str(info.value) and "do not deploy" in str(info.value)


def test_platform_index_that_is_not_an_index() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = b"<html>proxy error</html>"
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        headers = {"Content-Type": MEDIA["docker-list"], "Docker-Content-Digest": digest}
        return httpx.Response(200, headers=headers, content=b"" if request.method == "HEAD" else body)

    with RegistryClient(transport=httpx.MockTransport(handler)) as c, pytest.raises(RegistryError, match="not a valid"):
        c.head_manifest(parse_image_ref("127.0.0.1:5000/shop", "v1"), require_platform="linux/amd64")


def test_platform_matching_rules() -> None:
    def ok(have: str, want: str) -> bool:
        return parse_platform(have).satisfies(parse_platform(want))

    assert ok("linux/arm64", "linux/arm64/v8") and ok("linux/arm64/v8", "linux/arm64")
    assert ok("linux/x86_64", "linux/amd64") and ok("linux/amd64/v3", "linux/amd64")
    assert not ok("linux/amd64", "linux/amd64/v3")
    assert not ok("linux/arm/v6", "linux/arm/v7") and ok("linux/arm/v6", "linux/arm")
    assert not ok("windows/amd64", "linux/amd64")
    assert str(parse_platform(" Linux/ARM64/V8 ")) == "linux/arm64/v8"


# --- Docker Hub and GHCR: hosts that cannot exist offline, so a mock transport -----------------------

HUB_TOKEN_BODY = load_fixture("oci", "token-response-dockerhub.example.json")
GHCR_TOKEN_BODY = load_fixture("oci", "token-response-ghcr-anonymous.example.json")
DIGEST = "sha256:" + "5b" * 32


class HostedRegistry:
    """A mock Docker Hub or GHCR: registry host, token host, the challenge it sends, what it grants."""

    def __init__(
        self,
        *,
        registry: str,
        realm: str,
        service: str,
        challenge_scope: str | None,
        token_body: dict[str, Any],
        token_status: int = 200,
        manifest_status: int = 200,
    ) -> None:
        self.registry, self.realm, self.service = registry, realm, service
        self.challenge_scope = challenge_scope
        self.token_body, self.token_status, self.manifest_status = token_body, token_status, manifest_status
        self.token_requests: list[tuple[dict[str, str], str | None]] = []
        self.registry_requests: list[tuple[str, str, str | None]] = []

    @property
    def token(self) -> str:
        return str(self.token_body.get("token") or self.token_body.get("access_token"))

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        auth = request.headers.get("Authorization")
        assert url.scheme == "https", f"plain http to {url}"
        if str(url.copy_with(query=None)) == self.realm:
            self.token_requests.append((dict(url.params), auth))
            if self.token_status != 200:
                return httpx.Response(self.token_status, json=load_fixture("oci", "error-unauthorized-ghcr"))
            return httpx.Response(200, json=self.token_body)
        assert url.host == self.registry, f"unexpected host {url.host}"
        self.registry_requests.append((request.method, url.path, auth))
        if auth != f"Bearer {self.token}":
            challenge = f'Bearer realm="{self.realm}",service="{self.service}"'
            if self.challenge_scope:
                challenge += f',scope="{self.challenge_scope}"'
            return httpx.Response(
                401, headers={"WWW-Authenticate": challenge}, json=load_fixture("oci", "error-unauthorized")
            )
        if self.manifest_status != 200:
            return httpx.Response(self.manifest_status, json=load_fixture("oci", "error-denied"))
        headers = {"Docker-Content-Digest": DIGEST, "Content-Type": MEDIA["oci-index"], "Content-Length": "1234"}
        return httpx.Response(200, headers={**headers, "ratelimit-remaining": "76;w=21600"})

    def client(self, **kwargs: Any) -> RegistryClient:
        return RegistryClient(transport=httpx.MockTransport(self.handler), **kwargs)


def docker_hub(**kwargs: Any) -> HostedRegistry:
    values: dict[str, Any] = {
        "registry": DOCKER_HUB,
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "challenge_scope": "repository:library/nginx:pull",
        "token_body": HUB_TOKEN_BODY,
    }
    return HostedRegistry(**{**values, **kwargs})


def ghcr(**kwargs: Any) -> HostedRegistry:
    values: dict[str, Any] = {
        "registry": "ghcr.io",
        "realm": "https://ghcr.io/token",
        "service": "ghcr.io",
        "challenge_scope": "repository:user/image:pull",  # ghcr.io's placeholder
        "token_body": GHCR_TOKEN_BODY,
    }
    return HostedRegistry(**{**values, **kwargs})


def test_docker_hub_library_image_anonymous_head_only() -> None:
    hub = docker_hub()
    with hub.client() as c:
        ref = parse_image_ref("nginx", "1.27")
        assert c.head_manifest(ref).digest == DIGEST
        assert c.head_manifest(ref).digest == DIGEST
    assert hub.token_requests == [({"scope": "repository:library/nginx:pull", "service": "registry.docker.io"}, None)]
    assert [(m, p) for m, p, _ in hub.registry_requests] == [("HEAD", "/v2/library/nginx/manifests/1.27")] * 3
    assert [a for _, _, a in hub.registry_requests] == [None, f"Bearer {hub.token}", f"Bearer {hub.token}"]


def test_docker_hub_access_token_only() -> None:
    hub = docker_hub(token_body={"access_token": "opaque-hub-access-token", "expires_in": 300})
    with hub.client() as c:
        assert c.head_manifest(parse_image_ref("acme/shop", "3f2a1bc")).digest == DIGEST
    assert hub.registry_requests[-1][2] == "Bearer opaque-hub-access-token"
    assert hub.token_requests[0][0]["scope"] == "repository:acme/shop:pull"


def test_docker_hub_credentials_under_docker_io_name_the_secret() -> None:
    hub = docker_hub(token_status=401)
    creds = {"docker.io": RegistryCredentials("acmebot", "dckr_pat_s3cret-value")}
    hint = {"docker.io": "environment variable DOCKERHUB_TOKEN"}
    with hub.client(credentials=creds, secret_hint=hint) as c, pytest.raises(RegistryError) as info:
        c.head_manifest(parse_image_ref("acme/shop", "3f2a1bc"))
    assert (hub.token_requests[0][1] or "").startswith("Basic ")  # Basic-for-token, over https
    assert "check the credentials in environment variable DOCKERHUB_TOKEN (registries[docker.io].password)" in (
        info.value.hint
    )
    assert "dckr_pat_s3cret-value" not in str(info.value)


def _fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace the registry module's clock (only that module's view of `time`); returns [now]."""
    now = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: now[0], time=time.time, sleep=time.sleep)
    monkeypatch.setattr(registry_module, "time", fake)
    return now


@pytest.mark.parametrize(
    ("make", "reuse_at", "renew_at"),
    [(ghcr, 50.0, 61.0), (docker_hub, 250.0, 301.0)],  # no expires_in → 60 s; Docker Hub's says 300 s
    ids=["ghcr-default-60s", "hub-expires-in-300"],
)
def test_token_lifetime(monkeypatch: pytest.MonkeyPatch, make: Any, reuse_at: float, renew_at: float) -> None:
    now = _fake_clock(monkeypatch)
    hosted = make()
    start = now[0]
    with hosted.client() as c:
        ref = parse_image_ref(f"{'ghcr.io/' if hosted.registry == 'ghcr.io' else ''}acme/shop", "3f2a1bc")
        c.head_manifest(ref)
        now[0] = start + reuse_at
        c.head_manifest(ref)
        assert len(hosted.token_requests) == 1
        now[0] = start + renew_at
        c.head_manifest(ref)
    assert len(hosted.token_requests) == 2
    # The renewal used the remembered challenge: no second 401 round trip.
    assert [a is None for _, _, a in hosted.registry_requests] == [True, False, False, False]


def test_ghcr_anonymous_public_image_builds_its_own_scope() -> None:
    registry = ghcr()
    with registry.client() as c:
        info = c.head_manifest(parse_image_ref("ghcr.io/acme/shop", "3f2a1bc"))
    assert info.digest == DIGEST
    # The challenge's placeholder scope (repository:user/image:pull) is not what is asked for.
    assert registry.token_requests == [({"scope": "repository:acme/shop:pull", "service": "ghcr.io"}, None)]
    assert registry.registry_requests[-1][2] == f"Bearer {GHCR_TOKEN_BODY['token']}"


def test_ghcr_private_image_anonymous_is_refused_at_the_token_endpoint() -> None:
    registry = ghcr(token_status=401)
    with registry.client() as c, pytest.raises(RegistryError) as info:
        c.head_manifest(parse_image_ref("ghcr.io/acme/private-shop", "3f2a1bc"))
    assert not isinstance(info.value, ImageNotFoundError)
    assert "refused an anonymous token" in str(info.value) and "configure credentials for ghcr.io" in str(info.value)


def test_ghcr_refused_pat_names_the_secret() -> None:
    registry = ghcr(token_status=401)
    pat = "ghp_" + "x1Y2z3" * 6
    with registry.client(
        credentials={"ghcr.io": RegistryCredentials("acme-bot", pat)},
        secret_hint={"ghcr.io": "environment variable GHCR_TOKEN"},
    ) as c:
        with pytest.raises(RegistryError) as info:
            c.head_manifest(parse_image_ref("ghcr.io/acme/shop", "3f2a1bc"))
        texts = [str(info.value), repr(info.value), repr(c)]
    assert "check the credentials in environment variable GHCR_TOKEN (registries[ghcr.io].password)" in texts[0]
    assert all(pat not in t for t in texts)


def test_ghcr_403_denied_names_the_secret() -> None:
    registry = ghcr(manifest_status=403)
    with (
        registry.client(
            credentials={"ghcr.io": RegistryCredentials("acme-bot", "ghp_not-printed")},
            secret_hint={"ghcr.io": "environment variable GHCR_TOKEN"},
        ) as c,
        pytest.raises(RegistryError) as info,
    ):
        c.head_manifest(parse_image_ref("ghcr.io/acme/shop", "3f2a1bc"))
    assert "denied pull access to acme/shop (HTTP 403)" in str(info.value)
    assert "environment variable GHCR_TOKEN (registries[ghcr.io].password)" in info.value.hint
    assert "ghp_not-printed" not in str(info.value)


# --- the sandbox registry itself -------------------------------------------------------------------


def test_sandbox_registry_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sandbox.registry.DOCKER_REGISTRY", "/nonexistent/docker-registry")
    with pytest.raises(SandboxRegistryError, match="apt-get install docker-registry"), RegistryServer():
        pass


def test_sandbox_registry_that_dies_reports_its_log(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-root.pem"
    server = RegistryServer("token", realm="http://127.0.0.1:1/token", issuer="i", service="s", rootcertbundle=missing)
    with pytest.raises(SandboxRegistryError) as info, server:
        pass
    assert "exited" in str(info.value) and "no-such-root.pem" in str(info.value)
