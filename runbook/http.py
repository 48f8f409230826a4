"""Small HTTP helpers shared by the clients that retry on their own (registry, deploy webhook)."""

from __future__ import annotations

import email.utils
import time

import httpx


def without_userinfo(url: str) -> str:
    """The URL for messages and links, without any user:password@ part."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url


def retry_after(value: str | None, cap: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - time.time(), cap))
