"""Deploy by a signed POST to the team's deploy API; optionally follow a status URL until it is done.

The POST body is compact JSON with sorted keys, and the exact bytes sent are the bytes signed, with an id and a
timestamp, as Standard Webhooks (https://www.standardwebhooks.com) says: `webhook-id: <rollback id>`,
`webhook-timestamp: <unix seconds of this attempt>`, `webhook-signature: v1,<base64 HMAC-SHA256(key,
"{id}.{timestamp}.{body}")>`, where the key is the bytes base64-encoded after `whsec_` for a secret written that
way, else the secret's UTF-8 bytes. A receiver refuses a timestamp over 5 minutes off and a request it already
accepted (same id and timestamp), so a captured request cannot be replayed (docs/webhook.md); each attempt is
signed afresh. For the receivers written before, the body alone is also signed in `<signature_header>:
sha256=<hex HMAC-SHA256(secret's UTF-8 bytes, body)>` (GitHub's convention; replayable; `signature_header:
null` drops it). Every attempt of one deploy carries the
same `Idempotency-Key: <rollback id>` (also in the body as `rollback_id`; the same on a Retry of the flow run
and when a later run resumes an unfinished rollback), so a POST sent again cannot deploy twice on an API that
honours it. The body carries the verified `digest` and the `image` pinned by it: deploy that, never the tag.

Retries (up to `max_attempts`) happen only when the request surely did not start a deploy, or the API said
to try again: a connection that could not be opened, a 5xx or a 429 answer (`Retry-After` honoured up to
10 s). A timeout or a dropped connection *after* the request was sent is not retried: the deploy may have
started, and the error says so with the idempotency key. No secret or signature goes into a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import time
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx

from runbook import messages, progress
from runbook.config import RunbookConfig
from runbook.errors import DeployError, VersionUnreadableError
from runbook.http import retry_after, without_userinfo
from runbook.running import read_version
from runbook.targets.base import DeployRequest, DeployResult
from runbook.targets.webhook_settings import WebhookTarget

log = logging.getLogger(__name__)

SUCCEEDED = frozenset({"succeeded", "success", "done"})
FAILED = frozenset({"failed", "failure", "error"})

WHSEC_PREFIX = "whsec_"

_EXCERPT = 200
# Errors raised before a single byte of the request could reach the API: safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def sign(secret: bytes, body: bytes) -> str:
    """The legacy signature header value for `body`: `sha256=<hex HMAC-SHA256>` (no id, no timestamp)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: `whsec_<base64>` (Standard Webhooks) is the decoded bytes, any other its UTF-8."""
    if not secret.startswith(WHSEC_PREFIX):
        return secret.encode()
    try:
        return base64.b64decode(secret.removeprefix(WHSEC_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a secret starting with whsec_ must be base64 after it (Standard Webhooks)") from None


def standard_signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def request_body(request: DeployRequest) -> bytes:
    """The exact bytes POSTed (and signed): compact JSON, sorted keys."""
    payload = {
        "service": request.service,
        "environment": request.environment,
        "image": request.image,
        "digest": request.digest,
        "sha": request.sha,
        "reason": request.reason,
        "rollback_id": request.rollback_id,
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def build(config: RunbookConfig, service_name: str, environment: str) -> WebhookDeployTarget:
    """The webhook target of an environment."""
    return WebhookDeployTarget(config.deploy_settings(service_name, environment, WebhookTarget))


class WebhookDeployTarget:
    """Deploys with a signed POST to a deploy API (`deploy.type: webhook`)."""

    name = "webhook"

    max_retry_after: float = 10.0
    """Longest Retry-After (seconds) honoured before trying again."""
    base_backoff: float = 0.25
    """First pause after a connection error or a 5xx without Retry-After; doubled each attempt."""
    max_backoff: float = 2.0
    """Longest pause between two attempts without Retry-After."""

    def __init__(self, settings: WebhookTarget, *, transport: httpx.BaseTransport | None = None) -> None:
        self._settings = settings
        self._transport = transport
        self._url = without_userinfo(settings.url)

    def __repr__(self) -> str:
        return f"WebhookDeployTarget(url={self._url!r})"

    # --- DeployTarget -----------------------------------------------------------------------------

    def current_version(self) -> str | None:
        """The SHA the deploy API's `version_url` reports (JSON field `version_field`); None without one.

        An endpoint that cannot tell (unreachable, non-200, no SHA) is a warning, never an error: the deploy
        goes on, and the runbook reads the running version from the next source (version probe, GitHub).
        """
        if self._settings.version_url is None:
            return None
        try:
            with self._client() as client:
                return read_version(client, self._settings.version_url, json_field=self._settings.version_field)
        except VersionUnreadableError as exc:
            log.warning("the deploy API's version endpoint cannot tell which version runs: %s", exc)
            return None

    def preflight(self) -> str:
        """HEAD the URL (GET when HEAD is not allowed) and check the signing secret can be read; never POST."""
        checked = []
        if self._settings.secret is not None:
            self._secret()  # SecretError names where it was looked for
            checked.append(f"the signing secret in {self._settings.secret.describe()} is set")
        with self._client() as client:
            method = "HEAD"
            response = self._probe(client, method)
            if response.status_code in (405, 501):
                method = "GET"
                response = self._probe(client, method)
        status = response.status_code
        if status == 404:
            raise DeployError(
                f"the deploy webhook {self._url} answered HTTP 404 to {method}",
                hint="check deploy.url in the configuration: the deploy API has no such endpoint",
            )
        if status >= 500:
            raise DeployError(
                f"the deploy webhook {self._url} answered HTTP {status} to {method}",
                hint="the deploy API is failing: check its status before rolling back through it",
            )
        checked.insert(0, f"{self._url} answers {method} with HTTP {status}")
        return "; ".join(checked) + " (nothing was posted)"

    def deploy(self, request: DeployRequest) -> DeployResult:
        body = request_body(request)
        key = request.rollback_id
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": key,
            "webhook-id": key,
        }
        secret = self._secret()
        redact = [secret] if secret else []  # never echoed into a message, even if the API sends them back
        with self._client() as client:
            response = self._post(client, body, headers, key, secret, redact)
            answer = _json_object(response)
            deploy_id = answer.get("id")
            detail = f"{self._url} accepted the deploy of {request.sha[:12]}" + (
                f" as {deploy_id}" if deploy_id is not None else ""
            )
            detail += f" (HTTP {response.status_code})"
            status = _status(answer)
            if status in FAILED:
                raise self._failed(answer, deploy_id, self._url)
            if self._settings.status_url is None:
                if status in SUCCEEDED:
                    detail += f", status {status}"
                else:
                    detail += "; no status_url configured, so the deploy itself was not followed"
                return DeployResult(self.name, skipped=False, detail=detail, link=self._url)
            status_url = self._status_url(deploy_id, key)
            if status in SUCCEEDED:
                detail += f", status {status}"
                return DeployResult(self.name, skipped=False, detail=detail, link=without_userinfo(status_url))
            return self._follow(client, status_url, deploy_id, detail, redact)

    def finish(self, result: DeployResult) -> str | None:
        return None  # the deploy API keeps whatever it keeps; nothing here to clean up

    # --- the POST ---------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        return httpx.Client(timeout=self._settings.timeout_seconds, transport=self._transport, follow_redirects=False)

    def _probe(self, client: httpx.Client, method: str) -> httpx.Response:
        try:
            return client.request(method, self._settings.url)
        except httpx.TransportError as exc:
            raise DeployError(
                f"cannot reach the deploy webhook {self._url} ({type(exc).__name__})",
                hint="check deploy.url (host and port), the network and proxies",
            ) from None

    def _secret(self) -> str | None:
        """The signing secret, read now (a SecretError names where), or None when none is configured."""
        if self._settings.secret is None:
            return None
        secret = self._settings.secret.reveal().get_secret_value()
        try:
            signing_key(secret)
        except ValueError as exc:
            raise DeployError(
                f"the signing secret in {self._settings.secret.describe()} cannot be used: {exc}",
                hint="write the secret the deploy API gave (whsec_ then base64), or a plain random string",
                changed=False,
            ) from None
        return secret

    def _signed(self, secret: str | None, webhook_id: str, body: bytes, redact: list[str]) -> dict[str, str]:
        """One attempt's timestamp and, with a secret, its signatures (kept in `redact`)."""
        timestamp = int(time.time())  # per attempt: a receiver refuses a stale one
        headers = {"webhook-timestamp": str(timestamp)}
        if secret is None:
            return headers
        signature = standard_signature(signing_key(secret), webhook_id, timestamp, body)
        headers["webhook-signature"] = signature
        redact.append(signature.removeprefix("v1,"))
        if self._settings.signature_header:
            legacy = sign(secret.encode(), body)
            headers[self._settings.signature_header] = legacy
            redact.append(legacy.removeprefix("sha256="))
        return headers

    def _post(
        self,
        client: httpx.Client,
        body: bytes,
        headers: dict[str, str],
        key: str,
        secret: str | None,
        redact: list[str],
    ) -> httpx.Response:
        attempts = self._settings.max_attempts
        attempt = 0
        while True:
            attempt += 1
            signed = headers | self._signed(secret, key, body, redact)
            try:
                response = client.post(self._settings.url, content=body, headers=signed)
            except _NOT_SENT as exc:
                if attempt >= attempts:
                    raise DeployError(
                        f"cannot reach the deploy webhook {self._url} after {attempt} attempt(s) "
                        f"({type(exc).__name__})",
                        hint="nothing was deployed (no request reached the API): check deploy.url, the network "
                        "and the deploy API, then run again",
                    ) from None
                pause = self._backoff(attempt)
                log.info("deploy webhook %s: %s (attempt %d of %d)", self._url, type(exc).__name__, attempt, attempts)
                time.sleep(pause)
                continue
            except httpx.TransportError as exc:
                # Sent, but no answer: the API may be deploying right now. Retrying could deploy twice on an
                # API that ignores Idempotency-Key, so stop and let a person look.
                raise DeployError(
                    f"the deploy webhook {self._url} did not answer after the request was sent "
                    f"({type(exc).__name__}): the deploy may have started",
                    hint=f"check the deploy API for a deploy with Idempotency-Key {key} before retrying; a retry "
                    "of this flow run sends the same key",
                ) from None
            status = response.status_code
            if status < 300:
                return response
            if status == 429 or status >= 500:
                if attempt >= attempts:
                    what = "kept answering 429 Too Many Requests" if status == 429 else f"answered HTTP {status}"
                    raise DeployError(
                        f"the deploy webhook {self._url} {what} ({attempt} attempts)" + _excerpt(response, redact),
                        hint=f"the deploy API is failing or throttling; if it deployed anyway it holds a deploy "
                        f"with Idempotency-Key {key}; check it, then run again",
                    )
                asked = retry_after(response.headers.get("Retry-After"), self.max_retry_after)
                pause = self._backoff(attempt) if asked is None else asked
                log.info("deploy webhook %s answered HTTP %d; retrying in %.1f s", self._url, status, pause)
                time.sleep(pause)
                continue
            raise self._refused(response, redact)

    def _refused(self, response: httpx.Response, redact: list[str]) -> DeployError:
        status = response.status_code
        message = f"the deploy webhook {self._url} refused the deploy: HTTP {status}" + _excerpt(response, redact)
        if status in (401, 403):
            secret = self._settings.secret
            where = secret.describe() if secret is not None else None
            hint = (
                f"check that the secret in {where} is the key the deploy API verifies webhook-signature with, "
                "and that this machine's clock is right (a receiver refuses a timestamp 5 minutes off)"
                if where
                else "the deploy API wants a signature: configure deploy.secret (a {env: ...} reference)"
            )
        elif 300 <= status < 400:
            hint = "the deploy API redirects; a signed POST is not followed: put the final URL in deploy.url"
        else:
            hint = "nothing was deployed; fix what the deploy API says (configuration or request), then run again"
        return DeployError(message, hint=hint)

    def _backoff(self, attempt: int) -> float:
        return float(min(self.base_backoff * 2 ** (attempt - 1), self.max_backoff) + random.uniform(0, 0.05))

    # --- following the deploy ---------------------------------------------------------------------

    def _status_url(self, deploy_id: Any, key: str) -> str:
        template = str(self._settings.status_url)
        if "{id}" not in template:
            return template
        if deploy_id is None or isinstance(deploy_id, dict | list) or str(deploy_id) == "":
            raise DeployError(
                f"{self._url} accepted the deploy but answered no 'id', "
                f"so {without_userinfo(template)} cannot be followed",
                hint=f"the deploy may be running: check the deploy API (Idempotency-Key {key}); make the API "
                "answer JSON with an 'id', or remove {id} from deploy.status_url",
            )
        return template.replace("{id}", quote(str(deploy_id), safe=""))

    def _follow(
        self, client: httpx.Client, status_url: str, deploy_id: Any, detail: str, redact: list[str]
    ) -> DeployResult:
        link = without_userinfo(status_url)
        started = time.monotonic()
        deadline = started + self._settings.deadline_seconds
        last = "not read yet"
        while True:
            try:
                response = client.get(status_url, headers={"Accept": "application/json"})
            except httpx.TransportError as exc:
                last = f"no answer ({type(exc).__name__})"  # the deploy goes on without us: poll again
            else:
                if response.status_code in (401, 403):
                    raise DeployError(
                        f"the deploy status URL {link} refused to answer: HTTP {response.status_code}"
                        + _excerpt(response, redact),
                        hint=f"the deploy was accepted and may be running: follow it in the deploy API ({link}); "
                        "the status URL must be readable without credentials",
                    )
                answer = _json_object(response) if response.status_code == 200 else {}
                status = _status(answer)
                if response.status_code != 200:
                    last = f"HTTP {response.status_code}"
                elif status in SUCCEEDED:
                    seconds = time.monotonic() - started
                    progress.report(1.0, partial(messages.progress_deploy_api, status=status, seconds=seconds))
                    return DeployResult(
                        self.name,
                        skipped=False,
                        detail=f"{detail}; {link} reported {status} after {seconds:.1f} s",
                        link=link,
                    )
                elif status in FAILED:
                    raise self._failed(answer, deploy_id, link)
                else:
                    last = status or "no status in the answer"
            # How far a deploy is cannot be told from its status: None (runbook/progress.py); the API's word, short.
            seconds = time.monotonic() - started
            progress.report(None, partial(messages.progress_deploy_api, status=last[:_EXCERPT], seconds=seconds))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeployError(
                    f"the deploy{_id_text(deploy_id)} did not finish within "
                    f"{self._settings.deadline_seconds:g} s (last status: {last})",
                    hint=f"open {link}: it may still be running; do not start another rollback until it ends",
                )
            time.sleep(min(self._settings.poll_interval_seconds, remaining))

    def _failed(self, answer: dict[str, Any], deploy_id: Any, link: str) -> DeployError:
        message = answer.get("message")
        text = f": {str(message)[:_EXCERPT]}" if message else ""
        return DeployError(
            f"the deploy API reports the deploy{_id_text(deploy_id)} {_status(answer)}{text}",
            hint=f"open {link} to see why; the version running may be unchanged or half-deployed",
        )


def _id_text(deploy_id: Any) -> str:
    return f" {deploy_id}" if deploy_id is not None else ""


def _status(answer: dict[str, Any]) -> str:
    value = answer.get("status")
    return value.strip().lower() if isinstance(value, str) else ""


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer as a JSON object, or {} when it is empty or not one."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _excerpt(response: httpx.Response, redact: list[str]) -> str:
    """` (answer: ...)`: the start of the body on one line, with the secret and signature removed."""
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        return ""
    for value in redact:
        text = text.replace(value, "[redacted]")
    text = " ".join(text.split())
    if not text:
        return ""
    if len(text) > _EXCERPT:
        text = text[:_EXCERPT] + "..."
    return f" (answer: {text})"
