"""The registry client against a real Distribution 2.8 registry (open, htpasswd, token) and pure parsing."""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

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
)
from runbook.sandbox.registry import RegistryServer, SandboxRegistryError, delete_tag, push_image
from tests.support.token_server import ChallengeAuth, TokenServer

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = "ci-bot", "hunter2-Sup3r-s3cret"
WRONG_PASSWORD = "not-the-password-4711"
MEDIA = {
    "oci-manifest": "application/vnd.oci.image.manifest.v1+json",
    "docker-v2": "application/vnd.docker.distribution.manifest.v2+json",
    "oci-index": "application/vnd.oci.image.index.v1+json",
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


@pytest.mark.parametrize("kind", ["oci-manifest", "docker-v2", "oci-index"])
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
    assert info.value.step == "verify-image"


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
    """Answers the first requests with canned failures, then forwards to the real registry."""

    def __init__(self, upstream: RegistryServer, failures: list[tuple[int, dict[str, str]]]) -> None:
        self.failures = list(failures)
        self.seen: list[int] = []
        self.upstream_port = upstream.port
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

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


# --- the sandbox registry itself -------------------------------------------------------------------


def test_sandbox_registry_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runbook.sandbox.registry.DOCKER_REGISTRY", "/nonexistent/docker-registry")
    with pytest.raises(SandboxRegistryError, match="apt-get install docker-registry"), RegistryServer():
        pass


def test_sandbox_registry_that_dies_reports_its_log(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-root.pem"
    server = RegistryServer("token", realm="http://127.0.0.1:1/token", issuer="i", service="s", rootcertbundle=missing)
    with pytest.raises(SandboxRegistryError) as info, server:
        pass
    assert "exited" in str(info.value) and "no-such-root.pem" in str(info.value)
