"""LatencyProxy in front of a real Distribution registry: it forwards, delays and counts."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from sandbox.latency_proxy import LatencyProxy
from sandbox.process import free_port
from sandbox.registry import OCI_MANIFEST, RegistryServer, push_image


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with RegistryServer("open") as server:
        yield server


def test_forwards_a_push_and_a_manifest_check_as_the_registry_answers_them(registry: RegistryServer) -> None:
    with LatencyProxy(registry.base_url) as proxy:
        # A push follows the registry's Location headers: they must point back at the proxy.
        digest = push_image(f"http://{proxy.host}", "acme/proxied", "v1")
        direct = httpx.head(
            f"{registry.base_url}/v2/acme/proxied/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=5
        )
        proxied = httpx.head(f"{proxy.url}/v2/acme/proxied/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=5)
        got = httpx.get(f"{proxy.url}/v2/acme/proxied/manifests/{digest}", headers={"Accept": OCI_MANIFEST}, timeout=5)
        missing = httpx.head(f"{proxy.url}/v2/acme/proxied/manifests/nope", timeout=5)
        requests = proxy.requests
    assert direct.status_code == proxied.status_code == 200
    assert proxied.headers["Docker-Content-Digest"] == direct.headers["Docker-Content-Digest"] == digest
    assert proxied.headers["Content-Length"] == direct.headers["Content-Length"]
    assert got.status_code == 200 and got.json()["mediaType"] == OCI_MANIFEST
    assert got.headers["Docker-Content-Digest"] == digest
    assert missing.status_code == 404
    methods = [r.method for r in requests]
    assert methods[:3] == ["POST", "PUT", "POST"] and methods[-3:] == ["HEAD", "GET", "HEAD"]
    assert [r.status for r in requests[-3:]] == [200, 200, 404]
    assert requests[-2].path == f"/v2/acme/proxied/manifests/{digest}"


def test_every_request_waits_the_latency_and_is_counted(registry: RegistryServer) -> None:
    with LatencyProxy(registry.base_url, latency_seconds=0.2) as proxy, httpx.Client(base_url=proxy.url) as client:
        started = time.time()
        first = client.get("/v2/", timeout=5)
        second = client.get("/v2/", timeout=5)
        elapsed = time.time() - started
        assert first.status_code == second.status_code == 200
        assert elapsed >= 0.4, elapsed
        assert proxy.count == 2
        assert proxy.received_before(started) == 0 and proxy.received_before(time.time()) == 2
        proxy.latency_seconds = 0  # changeable while serving
        started = time.time()
        assert client.get("/v2/", timeout=5).status_code == 200
        assert time.time() - started < 0.2
        assert proxy.count == 3


def test_an_upstream_that_does_not_answer_is_a_502() -> None:
    with LatencyProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        answer = httpx.get(f"{proxy.url}/v2/", timeout=5)
        assert answer.status_code == 502
        assert "ConnectError" in answer.text
        assert [(r.method, r.status) for r in proxy.requests] == [("GET", 502)]
