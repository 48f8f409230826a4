"""How a deploy API verifies the runbook's signed webhook (Standard Webhooks): the example docs/webhook.md shows.

Written from the specification (https://www.standardwebhooks.com), not from the runbook's code, and used by the
deploy API of tests/targets/test_webhook.py for every POST it receives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from typing import Any

from runbook.config import SecretRef, WebhookTarget

TOLERANCE_SECONDS = 5 * 60


class Refused(Exception):
    """Not a genuine, fresh deploy request: answer 401 and do nothing."""


class WebhookReceiver:
    """Verifies signature, timestamp and id of each request; remembers those accepted within the tolerance.

    A replay is a request seen before: the same webhook-id with the same timestamp (and so the same signature).
    The runbook sends an id again only with a new timestamp, signed afresh: when it retries after a 5xx or 429
    (see `forget`) or resumes a rollback whose answer it lost; a deploy API then answers with the deploy that
    id started (the `Idempotency-Key`), and never deploys twice.
    """

    def __init__(self, secret: str, tolerance: int = TOLERANCE_SECONDS) -> None:
        # `whsec_<base64>`: the key is the decoded bytes; any other secret is used as its UTF-8 bytes.
        self._key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
        self._tolerance = tolerance
        self._seen: set[tuple[str, int]] = set()  # (webhook-id, timestamp) accepted within the tolerance
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> str:
        """The request's webhook-id, once the request is proven genuine, fresh and not a replay; else Refused."""
        lowered = {k.lower(): v for k, v in headers.items()}
        webhook_id = lowered.get("webhook-id", "")
        timestamp = lowered.get("webhook-timestamp", "")
        if not webhook_id or not timestamp.isdigit():
            raise Refused("missing webhook-id or webhook-timestamp")
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        expected = base64.b64encode(hmac.new(self._key, signed, hashlib.sha256).digest())
        # Several signatures, space-separated, while a secret is rotated; each `v1,<base64>`.
        offered = [s[3:].encode() for s in lowered.get("webhook-signature", "").split() if s.startswith("v1,")]
        if not any(hmac.compare_digest(s, expected) for s in offered):
            raise Refused("bad signature")  # checked before the timestamp: an unsigned one proves nothing
        current, sent = int(time.time() if now is None else now), int(timestamp)
        if abs(current - sent) > self._tolerance:
            raise Refused("stale timestamp")  # a captured request replayed later, or a clock far off
        with self._lock:
            # Older ones need no memory: their timestamp is stale now.
            self._seen = {seen for seen in self._seen if abs(current - seen[1]) <= self._tolerance}
            if (webhook_id, sent) in self._seen:
                raise Refused("replayed webhook-id")  # the same request again, within the tolerance
            self._seen.add((webhook_id, sent))
        return webhook_id

    def forget(self, headers: Mapping[str, str]) -> None:
        """The request was not acted on (answered 5xx or 429): its retry, maybe within the same second, is welcome."""
        lowered = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self._seen.discard((lowered.get("webhook-id", ""), int(lowered.get("webhook-timestamp", "0") or 0)))


def target_settings(url: str, secret_env: str, **overrides: Any) -> WebhookTarget:
    """The webhook target's settings the tests use: the secret from `secret_env`, short timeouts, a quick poll."""
    values: dict[str, Any] = {
        "type": "webhook",
        "url": url,
        "secret": SecretRef(env=secret_env),
        "timeout_seconds": 2.0,
        "poll_interval_seconds": 0.05,
        "deadline_seconds": 5.0,
    }
    return WebhookTarget.model_validate(values | overrides)
