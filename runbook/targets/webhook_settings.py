"""The settings of the webhook deploy target (`deploy.type: webhook`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from runbook.settings_base import (
    MAX_INTERVAL_SECONDS,
    MAX_REQUEST_SECONDS,
    MAX_WAIT_SECONDS,
    SecretRef,
    Settings,
    UrlStr,
    sha_path,
)


class WebhookTarget(Settings):
    """Deploy by a signed POST to a deploy API; optionally poll a status URL until it is done."""

    type: Literal["webhook"]
    url: UrlStr
    secret: SecretRef | None = Field(
        default=None,
        description="HMAC-SHA256 key signing id, timestamp and body (Standard Webhooks; whsec_<base64> or a plain "
        "string)",
    )
    signature_header: str | None = Field(
        default="X-Runbook-Signature-256",
        description="also sign the body alone in this header (sha256=<hex>), for receivers written before the "
        "webhook-signature header; replayable; null drops it",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=MAX_REQUEST_SECONDS)
    max_attempts: int = Field(default=3, ge=1, le=20)
    status_url: UrlStr | None = Field(default=None, description="polled until done; {id} is the deploy id answered")
    poll_interval_seconds: float = Field(default=2.0, gt=0, le=MAX_INTERVAL_SECONDS)
    deadline_seconds: float = Field(default=600.0, gt=0, le=MAX_WAIT_SECONDS)
    version_url: UrlStr | None = Field(
        default=None, description="GET answers JSON naming the commit running now; the most trusted source"
    )
    version_field: str = Field(default="sha", description="dotted path of the SHA in version_url's answer")

    @field_validator("version_field")
    @classmethod
    def _path(cls, value: str) -> str:
        return sha_path(value)
