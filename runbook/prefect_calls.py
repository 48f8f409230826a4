"""Prefect Variables written without waiting seconds for SQLite's writer lock.

On SQLite, a write that meets the server's own writes is answered 503 ("database is locked"). Prefect's client
then sleeps 2 s, 4 s... before trying again, and sleeps 2 s even when its retries are turned off (it sleeps
before it looks at the count): seconds of a rollback, or of its end, for a record of a few bytes.

`put_variable` writes a Variable through the same REST API with a plain httpx client (the API's address from
Prefect's client, its auth string or key from Prefect's settings) and tries again after 0.05 s, doubling up to
0.5 s, for as long as `within` allows. A Variable written whole is safe to write again.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx

#: The answers that mean "busy, try again".
BUSY = frozenset({429, 502, 503})


def put_variable(name: str, value: Any, tags: list[str], *, within: float = 20.0) -> None:
    """Create or replace the Prefect Variable `name` (raises httpx.HTTPStatusError when the API refuses it)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # where the API is, the ephemeral one included
        base_url = str(client.api_url).rstrip("/")
    with httpx.Client(base_url=base_url, headers=_auth_headers(), timeout=10) as http:
        response = _until_answered(lambda: _put(http, name, value, tags), within)
    response.raise_for_status()


def _put(http: httpx.Client, name: str, value: Any, tags: list[str]) -> httpx.Response:
    body = {"name": name, "value": value, "tags": tags}
    response = http.patch(f"/variables/name/{name}", json=body)
    if response.status_code == 404:
        response = http.post("/variables/", json=body)
        if response.status_code == 409:  # created by another writer meanwhile
            response = http.patch(f"/variables/name/{name}", json=body)
    return response


def _until_answered(call: Any, within: float) -> httpx.Response:
    deadline = time.monotonic() + within
    pause = 0.05
    while True:
        try:
            response: httpx.Response = call()
        except httpx.TransportError:
            if time.monotonic() + pause > deadline:
                raise
        else:
            if response.status_code not in BUSY or time.monotonic() + pause > deadline:
                return response
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _auth_headers() -> dict[str, str]:
    """What Prefect's client sends: Basic credentials of the auth string, or the API key as a bearer token."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    auth_string = PREFECT_API_AUTH_STRING.value()
    if auth_string:
        secret = auth_string.get_secret_value() if hasattr(auth_string, "get_secret_value") else str(auth_string)
        return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
    api_key = PREFECT_API_KEY.value()
    if api_key:
        secret = api_key.get_secret_value() if hasattr(api_key, "get_secret_value") else str(api_key)
        return {"Authorization": f"Bearer {secret}"}
    return {}


class BusyAtOnce(httpx.AsyncBaseTransport):
    """A transport for Prefect's async client: busy answers come back with `Retry-After: 0`.

    Prefect's client waits `Retry-After` when it is given, else 2 s, 4 s..., and waits even after its last
    attempt. With its retries turned off (PREFECT_CLIENT_MAX_RETRIES=0) and this transport, a busy answer comes
    back at once, and the caller decides how soon to try again (runbook/alerts/launcher.py: 0.1 s doubling).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if response.status_code in BUSY:
            response.headers["Retry-After"] = "0"
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


#: Prefect's client retries a busy answer this many times in a process that hears busy soon (about 50 s in all).
BUSY_RETRIES = 30


def hear_busy_soon() -> None:
    """In this process, Prefect's clients wait 0.1 s after a busy answer, doubling up to 2 s (not 2 s, 4 s, 8 s...).

    On SQLite, "database is locked" is a 503 that usually clears within milliseconds; Prefect's client sleeps
    2 s (then 4 s...) whatever happens, and that sleep was the second mode of every latency measured here
    (half the alerts took 2.5 s instead of 0.5 s). A response hook gives each busy answer a `Retry-After`
    (which Prefect's client honours) growing with the request's attempts, and the client's retries are raised
    to `BUSY_RETRIES` (PREFECT_CLIENT_MAX_RETRIES, set in the environment before Prefect is imported: see
    `runbook serve`), so its patience stays about a minute. Installed once per process; clients made before it
    keep Prefect's own waits.
    """
    from prefect.client import base

    if getattr(base, "_runbook_hears_busy_soon", False):
        return

    def on_sync(response: httpx.Response) -> None:
        _retry_after(response)

    async def on_async(response: httpx.Response) -> None:
        _retry_after(response)

    _with_response_hook(base.PrefectHttpxSyncClient, on_sync)
    _with_response_hook(base.PrefectHttpxAsyncClient, on_async)
    base._runbook_hears_busy_soon = True  # type: ignore[attr-defined]


def _with_response_hook(cls: type[Any], hook: Any) -> None:
    original = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        hooks = dict(kwargs.pop("event_hooks", None) or {})
        hooks["response"] = [*hooks.get("response", []), hook]
        original(self, *args, event_hooks=hooks, **kwargs)

    cls.__init__ = __init__


def _retry_after(response: httpx.Response) -> None:
    """A busy answer without `Retry-After` gets one: 0.1 s at the request's first, doubling up to 2 s."""
    if response.status_code not in BUSY or "Retry-After" in response.headers:
        return
    tries = int(response.request.extensions.get("runbook_busy", 0)) + 1
    response.request.extensions["runbook_busy"] = tries
    response.headers["Retry-After"] = f"{min(0.1 * 2 ** (tries - 1), 2.0):g}"
