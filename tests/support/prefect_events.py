"""Read events back from the Prefect API of the tests (events are sent asynchronously: poll)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from prefect.settings import PREFECT_API_URL


def read_events(prefix: str, resource: str) -> list[dict[str, Any]]:
    """Events whose name starts with `prefix`, about `resource`."""
    body = {"filter": {"event": {"prefix": [prefix]}, "any_resource": {"id": [resource]}}, "limit": 50}
    answer = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=body, timeout=10)
    answer.raise_for_status()
    return list(answer.json()["events"])


def wait_for_events(prefix: str, resource: str, since: str, names: set[str], timeout: float = 20) -> list[str]:
    """Names of the events seen since `since` (ISO time), once all of `names` are there (or the timeout)."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = sorted(e["event"] for e in read_events(prefix, resource) if e["occurred"] >= since)
        if names <= set(seen):
            break
        time.sleep(0.5)
    return seen
