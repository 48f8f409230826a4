"""The example deploy API of docs/examples/deploy_api.py, driven by the runbook's real webhook deploy target.

What a team copies must hold what docs/webhook.md promises: a signed deploy accepted and followed to success
through its status endpoint, one rollback id = one deploy (an answer lost, then the same id sent again signed
afresh), a bad signature refused with nothing deployed, and the version endpoint read as the running version.
"""

from __future__ import annotations

import base64
import importlib.util
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from runbook.errors import DeployError
from runbook.targets.base import DeployRequest
from runbook.targets.webhook import WebhookDeployTarget, request_body, standard_signature
from runbook.targets.webhook_settings import WebhookTarget
from tests.support.webhook_receiver import target_settings

pytestmark = pytest.mark.timeout(30)

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "deploy_api.py"
# A Standard Webhooks secret, as the docs tell teams to generate one: the example must decode it.
SECRET = "whsec_" + base64.b64encode(b"thirty-two bytes of signing key!").decode()
ENV = "RUNBOOK_TEST_DEPLOY_API_SECRET"
SHA = "3f2a1bc9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3"
DIGEST = "sha256:" + "ab" * 32
# What the flow sends (tasks/verify_image.py, ImageCheck.pinned): the image pinned by its verified digest.
PINNED = DeployRequest(
    service="shop",
    environment="production",
    sha=SHA,
    image=f"127.0.0.1:5000/shop@{DIGEST}",
    digest=DIGEST,
    reason="5xx spike après le déploiement",
    rollback_id="0b9e6c1e-run",
)


def settings(url: str, **overrides: Any) -> WebhookTarget:
    return target_settings(url, ENV, **overrides)


def _load_example() -> ModuleType:
    """The example as a module, loaded from its file (docs/ is no package, and the example imports nothing here)."""
    spec = importlib.util.spec_from_file_location("deploy_api_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


example = _load_example()


class Example:
    """The example API on 127.0.0.1 (a free port) in a thread, with a deploy function that records."""

    def __init__(self) -> None:
        self.deployed: list[str] = []
        self.server: Any = example.DeployApi(("127.0.0.1", 0), SECRET, deploy=self.deployed.append)
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def target(self, **overrides: Any) -> WebhookDeployTarget:
        """The runbook's webhook target configured as the example's docstring says."""
        values = {
            "signature_header": None,
            "status_url": f"{self.base_url}/api/deploys/{{id}}",
            "version_url": f"{self.base_url}/api/services/shop",
        }
        return WebhookDeployTarget(settings(f"{self.base_url}/api/deploys", **(values | overrides)))

    def deploy_ids(self) -> list[str]:
        return [d.id for d in self.server.deploys.all()]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Example]:
    monkeypatch.setenv(ENV, SECRET)
    running = Example()
    running._thread.start()
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()


class AnswerLost(httpx.HTTPTransport):
    """The request reaches the API and is answered, but the answer never comes back to the runbook."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        response.close()
        raise httpx.ReadError("connection reset after the request was sent", request=request)


def test_a_deploy_is_accepted_and_followed_to_success(api: Example) -> None:
    t = api.target()
    assert "HEAD with HTTP 200" in t.preflight()  # the dry run's check: nothing posted
    assert api.deployed == []
    result = t.deploy(PINNED)
    [deploy_id] = api.deploy_ids()
    assert api.deployed == [PINNED.image]  # the image pinned by digest, never the tag
    assert result.link == f"{api.base_url}/api/deploys/{deploy_id}"
    assert f"as {deploy_id} (HTTP 202)" in result.detail  # answered queued: the runbook had to follow it
    assert f"{result.link} reported succeeded" in result.detail


def test_an_answer_lost_then_sent_again_is_the_same_deploy(api: Example, monkeypatch: pytest.MonkeyPatch) -> None:
    lost = WebhookDeployTarget(settings(f"{api.base_url}/api/deploys", signature_header=None), transport=AnswerLost())
    with pytest.raises(DeployError, match="may have started"):
        lost.deploy(PINNED)
    [first] = api.deploy_ids()
    # The Retry comes later and is signed afresh (a new webhook-timestamp): not a replay, the same deploy.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 2)
    again = api.target().deploy(PINNED)
    monkeypatch.setattr(time, "time", lambda: real_time() + 4)  # the same second again would be a replay
    once_more = api.target().deploy(PINNED)  # and once more, after it succeeded
    assert api.deploy_ids() == [first]
    assert again.link == once_more.link == f"{api.base_url}/api/deploys/{first}"
    assert "(HTTP 200)" in again.detail and "status succeeded" in once_more.detail
    assert api.deployed == [PINNED.image]  # deployed once


def test_a_bad_signature_is_refused_and_nothing_deployed(api: Example, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "whsec_" + base64.b64encode(b"another key, not the deploy API's").decode())
    with pytest.raises(DeployError, match=r"HTTP 401 \(answer: \{\"error\": \"bad signature\"\}\)"):
        api.target().deploy(PINNED)
    body = request_body(PINNED)
    unsigned = httpx.post(f"{api.base_url}/api/deploys", content=body, headers={"webhook-id": PINNED.rollback_id})
    assert unsigned.status_code == 401
    # A genuine request captured and sent again as it was: refused, even though it verifies.
    now = int(time.time())
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    headers = {
        "webhook-id": PINNED.rollback_id,
        "webhook-timestamp": str(now),
        "webhook-signature": standard_signature(key, PINNED.rollback_id, now, body),
    }
    assert httpx.post(f"{api.base_url}/api/deploys", content=body, headers=headers).status_code == 202
    replayed = httpx.post(f"{api.base_url}/api/deploys", content=body, headers=headers)
    assert (replayed.status_code, replayed.json()) == (401, {"error": "replayed webhook-id"})
    assert len(api.deploy_ids()) == 1


def test_the_version_endpoint_is_the_running_version(api: Example) -> None:
    t = api.target()
    assert t.current_version() is None  # nothing deployed through it yet: 404, a warning, the next source
    t.deploy(PINNED)
    assert t.current_version() == SHA
