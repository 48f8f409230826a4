"""The webhook deploy target against a deploy API of the test's own that checks the HMAC signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from runbook.errors import DeployError, SecretError
from runbook.targets.base import DeployRequest, DeployTarget
from runbook.targets.webhook import WebhookDeployTarget, request_body, standard_signature
from runbook.targets.webhook_settings import WebhookTarget
from tests.support.webhook_receiver import TOLERANCE_SECONDS, Refused, WebhookReceiver, target_settings

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec-3am-rollback-Kq9f1c"
WRONG_SECRET = "whsec-not-the-key-77xz"
ENV = "RUNBOOK_TEST_WEBHOOK_SECRET"
HEADER = "X-Runbook-Signature-256"
SHA = "3f2a1bc9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3"
REQUEST = DeployRequest(
    service="shop",
    environment="production",
    sha=SHA,
    image="127.0.0.1:5000/shop:" + SHA,
    digest="sha256:" + "ab" * 32,
    reason="5xx spike après le déploiement",
    rollback_id="0b9e6c1e-run",
)
KEY = REQUEST.rollback_id

Answer = tuple[int, dict[str, str], dict[str, Any] | None]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class DeployApi:
    """A deploy API on 127.0.0.1: verifies the signature of every POST, then answers from a script.

    POST /deploy: verified by the example receiver (tests/support/webhook_receiver.py): 401 on a missing or wrong
    signature, a stale timestamp or a replayed webhook-id (echoing the signature it got, as careless APIs do),
    else the next scripted answer, else 202 {"id": "d-1", "status": "queued"}. GET /status/<id>: the next of
    `statuses` (the last one repeats). HEAD/GET /deploy: 200, or 405 to HEAD when `head_allowed` is False.
    """

    def __init__(self, secret: str | None = SECRET) -> None:
        self.receiver = WebhookReceiver(secret) if secret is not None else None
        self.refusals: list[str] = []
        self.script: list[Answer] = []
        self.statuses: list[dict[str, Any]] = [{"status": "succeeded"}]
        self.head_allowed = True
        self.post_delay = 0.0
        self.version: tuple[int, dict[str, Any]] = (200, {"service": "shop", "running": {"sha": SHA}})
        self.received: list[Received] = []
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = _DeployApiServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="deploy-api", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/deploy"

    def requests(self, method: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.method == method]

    def __enter__(self) -> DeployApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._thread.join(timeout=5)
        self._server.server_close()


class _DeployApiServer(ThreadingHTTPServer):
    """The HTTP server of a DeployApi: its handler reads the script and records through `api`."""

    def __init__(self, api: DeployApi) -> None:
        super().__init__(("127.0.0.1", 0), _DeployApiHandler)
        self.api = api
        self.daemon_threads = True


class _DeployApiHandler(BaseHTTPRequestHandler):
    server: _DeployApiServer

    @property
    def api(self) -> DeployApi:
        return self.server.api

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self, body: bytes = b"") -> None:
        with self.api._lock:
            self.api.received.append(Received(self.command, self.path, dict(self.headers.items()), body))

    def _answer(
        self, status: int, body: dict[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._record(body)
        if self.api.receiver is not None:
            try:
                self.api.receiver.verify(dict(self.headers.items()), body)
            except Refused as refused:
                with self.api._lock:
                    self.api.refusals.append(str(refused))
                got = self.headers.get("webhook-signature", "")
                self._answer(401, {"error": str(refused), "received": got})
                return
        if self.api.post_delay and self.api._release.wait(self.api.post_delay):
            return  # the test is over
        with self.api._lock:
            answer = self.api.script.pop(0) if self.api.script else (202, {}, {"id": "d-1", "status": "queued"})
        status, headers, payload = answer
        if self.api.receiver is not None and (status == 429 or status >= 500):
            self.api.receiver.forget(dict(self.headers.items()))  # not acted on: a retry is welcome
        self._answer(status, payload, headers)

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/status/"):
            with self.api._lock:
                status = self.api.statuses.pop(0) if len(self.api.statuses) > 1 else self.api.statuses[0]
            self._answer(200, {"id": self.path.rsplit("/", 1)[1], **status})
        elif self.path == "/deploy":
            self._answer(200, {"hello": "POST a signed deploy here"})
        elif self.path == "/version":
            self._answer(*self.api.version)
        else:
            self._answer(404, {"error": "not found"})

    def do_HEAD(self) -> None:
        self._record()
        if self.path != "/deploy":
            self._answer(404)
        elif not self.api.head_allowed:
            self._answer(405, headers={"Allow": "GET, POST"})
        else:
            self._answer(200)


@pytest.fixture
def api() -> Iterator[DeployApi]:
    with DeployApi() as server:
        yield server


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)


def settings(url: str, **overrides: Any) -> WebhookTarget:
    return target_settings(url, ENV, **overrides)


def target(url: str, **overrides: Any) -> WebhookDeployTarget:
    t = WebhookDeployTarget(settings(url, **overrides))
    t.base_backoff = 0.01  # keep retried tests quick; the schedule itself is not under test
    return t


def all_text(exc: DeployError) -> str:
    return " ".join((str(exc), repr(exc), exc.message, exc.hint))


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return super().handle_request(request)


# --- the signed POST ------------------------------------------------------------------------------


def test_is_a_deploy_target() -> None:
    t: DeployTarget = WebhookDeployTarget(settings("http://127.0.0.1:9/deploy"))
    assert t.name == "webhook"
    assert t.current_version() is None


def test_version_url_tells_which_version_runs_or_nothing(api: DeployApi, caplog: pytest.LogCaptureFixture) -> None:
    t = target(api.url, version_url=f"{api.base_url}/version", version_field="running.sha")
    assert t.current_version() == SHA
    api.version = (200, {"running": {"sha": "v2.3.1"}})
    with caplog.at_level(logging.WARNING, logger="runbook.targets.webhook"):
        assert t.current_version() is None  # a warning, never an error: the deploy must not depend on it
        assert "'running.sha' = 'v2.3.1', which is not a commit SHA" in caplog.text
        api.version = (503, {"error": "down"})
        assert t.current_version() is None and "answered HTTP 503" in caplog.text
    assert target(api.url, version_url="http://127.0.0.1:9/version").current_version() is None
    assert api.requests("POST") == []


def test_signed_body_accepted(api: DeployApi) -> None:
    result = target(api.url).deploy(REQUEST)
    [post] = api.requests("POST")
    assert api.refusals == []  # the example receiver verified signature, timestamp and id
    assert post.headers["webhook-id"] == KEY
    assert abs(int(post.headers["webhook-timestamp"]) - time.time()) < 5
    assert post.headers["webhook-signature"].startswith("v1,")
    assert post.path == "/deploy"
    assert post.body == request_body(REQUEST)
    assert json.loads(post.body) == {
        "service": "shop",
        "environment": "production",
        "image": REQUEST.image,
        "digest": REQUEST.digest,
        "sha": SHA,
        "reason": REQUEST.reason,
        "rollback_id": REQUEST.rollback_id,
    }
    assert post.body == json.dumps(json.loads(post.body), separators=(",", ":"), sort_keys=True).encode()
    expected = "sha256=" + hmac.new(SECRET.encode(), post.body, hashlib.sha256).hexdigest()
    assert post.headers[HEADER] == expected
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["Idempotency-Key"] == KEY
    assert (result.target, result.skipped, result.link) == ("webhook", False, api.url)
    assert "accepted" in result.detail and "d-1" in result.detail
    assert "not followed" in result.detail  # no status_url: the target says it did not watch the deploy
    assert SECRET not in result.detail
    assert target(api.url).finish(result) is None


def test_the_legacy_body_signature_header_can_be_renamed_or_dropped(api: DeployApi) -> None:
    target(api.url, signature_header="X-Hub-Signature-256").deploy(REQUEST)
    target(api.url, signature_header=None).deploy(replace(REQUEST, rollback_id="second-rollback"))
    renamed, dropped = api.requests("POST")
    assert renamed.headers["X-Hub-Signature-256"].startswith("sha256=") and HEADER not in renamed.headers
    assert not any(k.lower().startswith("x-") for k in dropped.headers) and "webhook-signature" in dropped.headers
    assert api.refusals == []


def test_a_replayed_request_is_refused(api: DeployApi) -> None:
    target(api.url).deploy(REQUEST)
    [post] = api.requests("POST")
    replayed = httpx.post(api.url, content=post.body, headers=post.headers, timeout=5)
    assert replayed.status_code == 401 and replayed.json()["error"] == "replayed webhook-id"
    forged = dict(post.headers, **{"webhook-timestamp": str(int(time.time()) + 1)})  # a fresh time, unsigned
    assert httpx.post(api.url, content=post.body, headers=forged, timeout=5).json()["error"] == "bad signature"


def test_the_example_receiver_refuses_a_stale_timestamp_not_a_resend(api: DeployApi) -> None:
    target(api.url).deploy(REQUEST)
    [post] = api.requests("POST")
    sent = int(post.headers["webhook-timestamp"])
    receiver = WebhookReceiver(SECRET)
    for now in (sent + TOLERANCE_SECONDS + 1, sent - TOLERANCE_SECONDS - 1):  # replayed later; from the future
        with pytest.raises(Refused, match="stale timestamp"):
            receiver.verify(post.headers, post.body, now=now)
    assert receiver.verify(post.headers, post.body, now=sent + TOLERANCE_SECONDS) == KEY
    # The same id signed afresh (a rollback resumed after its answer was lost) is no replay: the deploy API's
    # Idempotency-Key then answers with the deploy it started.
    later = sent + 60
    signature = standard_signature(SECRET.encode(), KEY, later, post.body)
    resent = post.headers | {"webhook-timestamp": str(later), "webhook-signature": signature}
    assert receiver.verify(resent, post.body, now=later) == KEY


def test_a_whsec_secret_is_its_base64_key(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "whsec_" + base64.b64encode(b"\x00\xff 32 random bytes, not text \xfe\x01").decode()
    monkeypatch.setenv(ENV, secret)
    with DeployApi(secret=secret) as api:
        target(api.url).deploy(REQUEST)
        assert api.refusals == []
        monkeypatch.setenv(ENV, "whsec_not*base64")
        with pytest.raises(DeployError, match="whsec_ must be base64") as info:
            target(api.url).deploy(REQUEST)
        assert "not*base64" not in str(info.value) and len(api.requests("POST")) == 1


def test_wrong_secret_is_401_and_never_leaks(
    api: DeployApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(ENV, WRONG_SECRET)
    with pytest.raises(DeployError) as info:
        target(api.url).deploy(REQUEST)
    [post] = api.requests("POST")  # a 401 is not retried
    sent_signature, legacy = post.headers["webhook-signature"], post.headers[HEADER]
    text = all_text(info.value)
    assert "HTTP 401" in text and "bad signature" in text  # the API's answer, excerpted
    assert f"environment variable {ENV}" in text  # where to look
    for secret in (WRONG_SECRET, SECRET, sent_signature.removeprefix("v1,"), legacy.removeprefix("sha256=")):
        assert secret not in text
        assert secret not in caplog.text
    assert "[redacted]" in text  # the API echoed the signature back; it was cut out


def test_no_secret_configured_sends_no_signature() -> None:
    with DeployApi(secret=None) as api:
        result = target(api.url, secret=None).deploy(REQUEST)
    [post] = api.requests("POST")
    assert HEADER not in post.headers and not any("signature" in k.lower() for k in post.headers)
    assert post.headers["Idempotency-Key"] == KEY
    assert result.link == api.url


def test_unset_secret_posts_nothing(api: DeployApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    with pytest.raises(SecretError, match=ENV):
        target(api.url).deploy(REQUEST)
    assert api.received == []


# --- retries --------------------------------------------------------------------------------------


def test_503_then_200_is_retried_once(api: DeployApi) -> None:
    api.script = [(503, {}, {"error": "deployer restarting"}), (200, {}, {"id": "d-7"})]
    result = target(api.url).deploy(REQUEST)
    assert len(api.requests("POST")) == 2
    assert "d-7" in result.detail


def test_429_with_retry_after_zero_then_200(api: DeployApi) -> None:
    api.script = [(429, {"Retry-After": "0"}, {"error": "slow down"}), (202, {}, {"id": "d-8"})]
    started = time.monotonic()
    result = target(api.url).deploy(REQUEST)
    assert time.monotonic() - started < 1.0
    assert len(api.requests("POST")) == 2
    assert "d-8" in result.detail


def test_retry_after_is_honoured_up_to_the_cap(api: DeployApi) -> None:
    api.script = [(503, {"Retry-After": "1"}, None), (202, {}, {"id": "d-9"})]
    t = target(api.url)
    started = time.monotonic()
    t.deploy(REQUEST)
    assert time.monotonic() - started >= 0.9
    api.script = [(429, {"Retry-After": "3600"}, None), (202, {}, {"id": "d-10"})]
    t.max_retry_after = 0.2  # an hour is capped (10 s in production)
    started = time.monotonic()
    t.deploy(replace(REQUEST, rollback_id="another-rollback"))  # the same id again would be a replay
    assert time.monotonic() - started < 2.0


def test_same_idempotency_key_and_signed_bytes_on_every_attempt(api: DeployApi) -> None:
    api.script = [(502, {}, None), (503, {}, None), (202, {}, {"id": "d-2"})]
    target(api.url, max_attempts=3).deploy(REQUEST)
    posts = api.requests("POST")
    assert len(posts) == 3
    assert {p.headers["Idempotency-Key"] for p in posts} == {KEY}
    assert {p.body for p in posts} == {request_body(REQUEST)}
    assert len({p.headers[HEADER] for p in posts}) == 1
    assert api.refusals == []  # each attempt signed afresh; the same webhook-id accepted after a 5xx
    assert {p.headers["webhook-id"] for p in posts} == {KEY}


def test_5xx_until_attempts_run_out(api: DeployApi) -> None:
    api.script = [(500, {}, {"error": "boom"})] * 5
    with pytest.raises(DeployError) as info:
        target(api.url, max_attempts=2).deploy(REQUEST)
    assert len(api.requests("POST")) == 2
    text = all_text(info.value)
    assert "HTTP 500" in text and "2 attempts" in text and KEY in text


def test_400_is_not_retried(api: DeployApi) -> None:
    api.script = [(400, {}, {"error": "unknown environment 'production'"})]
    with pytest.raises(DeployError) as info:
        target(api.url).deploy(REQUEST)
    assert len(api.requests("POST")) == 1
    text = str(info.value)
    assert "HTTP 400" in text and "unknown environment 'production'" in text
    assert "nothing was deployed" in text


def test_long_error_body_is_excerpted(api: DeployApi) -> None:
    api.script = [(422, {}, {"error": "x" * 5000})]
    with pytest.raises(DeployError) as info:
        target(api.url).deploy(REQUEST)
    assert "HTTP 422" in str(info.value) and len(str(info.value)) < 600


def test_redirect_is_not_followed(api: DeployApi) -> None:
    api.script = [(307, {"Location": "/elsewhere"}, None)]
    with pytest.raises(DeployError, match="HTTP 307") as info:
        target(api.url).deploy(REQUEST)
    assert len(api.requests("POST")) == 1 and "final URL" in str(info.value)


def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the deploy: nothing listens there
    transport = CountingTransport()
    t = WebhookDeployTarget(settings(f"http://127.0.0.1:{port}/deploy", max_attempts=3), transport=transport)
    t.base_backoff = 0.01
    with pytest.raises(DeployError) as info:
        t.deploy(REQUEST)
    assert transport.calls == 3
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text and "3 attempt(s)" in text and "ConnectError" in text
    assert "nothing was deployed" in text


def test_read_timeout_after_sending_is_not_retried(api: DeployApi) -> None:
    api.post_delay = 5.0
    with pytest.raises(DeployError) as info:
        target(api.url, timeout_seconds=0.3, max_attempts=3).deploy(REQUEST)
    assert len(api.requests("POST")) == 1
    text = all_text(info.value)
    assert "may have started" in text and KEY in text and "ReadTimeout" in text


# --- following the deploy -------------------------------------------------------------------------


def test_status_url_polled_until_succeeded(api: DeployApi) -> None:
    api.script = [(202, {}, {"id": "d 42/x", "status": "queued"})]
    api.statuses = [{"status": "pending"}, {"status": "running"}, {"status": "Succeeded"}]
    result = target(api.url, status_url=f"{api.base_url}/status/{{id}}").deploy(REQUEST)
    gets = api.requests("GET")
    assert [g.path for g in gets] == ["/status/d%2042%2Fx"] * 3  # the id is escaped into one path segment
    assert result.link == f"{api.base_url}/status/d%2042%2Fx"
    assert "succeeded" in result.detail


@pytest.mark.parametrize("word", ["success", "done"])
def test_other_success_words(api: DeployApi, word: str) -> None:
    api.statuses = [{"status": word}]
    result = target(api.url, status_url=f"{api.base_url}/status/{{id}}").deploy(REQUEST)
    assert word in result.detail


def test_status_url_without_id_placeholder(api: DeployApi) -> None:
    api.script = [(202, {}, None)]  # no body at all: nothing to put in {id}, but none is needed
    api.statuses = [{"status": "running"}, {"status": "done"}]
    result = target(api.url, status_url=f"{api.base_url}/status/latest").deploy(REQUEST)
    assert result.link == f"{api.base_url}/status/latest"
    assert len(api.requests("GET")) == 2


def test_status_url_needs_an_id(api: DeployApi) -> None:
    api.script = [(202, {}, {"status": "queued"})]
    with pytest.raises(DeployError, match="answered no 'id'") as info:
        target(api.url, status_url=f"{api.base_url}/status/{{id}}").deploy(REQUEST)
    assert KEY in str(info.value)
    assert api.requests("GET") == []


@pytest.mark.parametrize("word", ["failed", "failure", "error"])
def test_failed_status_is_a_deploy_error_with_its_message(api: DeployApi, word: str) -> None:
    api.statuses = [{"status": "running"}, {"status": word, "message": "migration 0042 failed: lock timeout"}]
    with pytest.raises(DeployError) as info:
        target(api.url, status_url=f"{api.base_url}/status/{{id}}").deploy(REQUEST)
    text = str(info.value)
    assert "migration 0042 failed: lock timeout" in text and "d-1" in text and word in text
    assert f"{api.base_url}/status/d-1" in text


def test_failed_in_the_post_answer_itself(api: DeployApi) -> None:
    api.script = [(200, {}, {"id": "d-3", "status": "error", "message": "image digest unknown"})]
    with pytest.raises(DeployError, match="image digest unknown"):
        target(api.url).deploy(REQUEST)


def test_succeeded_in_the_post_answer_is_not_polled(api: DeployApi) -> None:
    api.script = [(200, {}, {"id": "d-4", "status": "done"})]
    result = target(api.url, status_url=f"{api.base_url}/status/{{id}}").deploy(REQUEST)
    assert api.requests("GET") == []
    assert result.link == f"{api.base_url}/status/d-4"


def test_deadline(api: DeployApi) -> None:
    api.statuses = [{"status": "running"}]
    started = time.monotonic()
    with pytest.raises(DeployError) as info:
        target(api.url, status_url=f"{api.base_url}/status/{{id}}", deadline_seconds=0.4).deploy(REQUEST)
    assert time.monotonic() - started < 3.0
    text = str(info.value)
    assert "did not finish within 0.4 s" in text and "last status: running" in text
    assert "may still be running" in text
    assert len(api.requests("GET")) >= 2


def test_unreachable_status_url_is_polled_until_the_deadline(api: DeployApi) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeployError, match=r"last status: no answer \(ConnectError\)"):
        target(api.url, status_url=f"http://127.0.0.1:{port}/status/{{id}}", deadline_seconds=0.3).deploy(REQUEST)


# --- preflight ------------------------------------------------------------------------------------


def test_preflight_heads_and_never_posts(api: DeployApi) -> None:
    said = target(api.url).preflight()
    assert api.requests("POST") == []
    assert [r.method for r in api.received] == ["HEAD"]
    assert api.url in said and "HEAD" in said and "HTTP 200" in said
    assert f"environment variable {ENV}" in said and SECRET not in said


def test_preflight_falls_back_to_get_on_405(api: DeployApi) -> None:
    api.head_allowed = False
    said = target(api.url).preflight()
    assert [r.method for r in api.received] == ["HEAD", "GET"]
    assert "GET" in said and "HTTP 200" in said


def test_preflight_404_and_unreachable(api: DeployApi) -> None:
    with pytest.raises(DeployError, match="HTTP 404"):
        target(f"{api.base_url}/no-such-endpoint").preflight()
    assert api.requests("POST") == []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeployError, match="cannot reach"):
        target(f"http://127.0.0.1:{port}/deploy").preflight()


def test_preflight_checks_the_secret_is_set(api: DeployApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    with pytest.raises(SecretError, match=ENV):
        target(api.url).preflight()
    assert api.requests("POST") == []


def test_messages_never_show_url_credentials(api: DeployApi) -> None:
    url = api.url.replace("http://", "http://deployer:pa55word@")
    api.script = [(400, {}, {"error": "nope"})]
    t = target(url)
    with pytest.raises(DeployError) as info:
        t.deploy(REQUEST)
    assert "pa55word" not in all_text(info.value) and "pa55word" not in repr(t)


def test_one_target_preflights_then_deploys_through_its_transport(api: DeployApi) -> None:
    transport = CountingTransport()
    t = WebhookDeployTarget(settings(api.url), transport=transport)
    t.preflight()
    t.deploy(REQUEST)
    assert [r.method for r in api.received] == ["HEAD", "POST"]
    assert transport.calls == 2
