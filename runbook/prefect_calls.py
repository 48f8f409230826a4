"""How this project talks to a busy Prefect API: soon again, not after Prefect's 2 s, 4 s, 8 s...

On SQLite, a write that meets the server's own writes is answered 503 ("database is locked"), which usually
clears within milliseconds. Prefect's client then sleeps 2 s, 4 s... before trying again, and sleeps 2 s even
when its retries are turned off (it sleeps before it looks at the count): seconds of a rollback for a record of a
few bytes. `hear_busy_soon` makes every Prefect client of the process wait 0.1 s instead, doubling up to 2 s;
`put_variable` writes a Variable whole with one call (two when it does not exist yet).
"""

from __future__ import annotations

from typing import Any

import httpx

#: The answers that mean "busy, try again".
BUSY = frozenset({429, 502, 503})


def put_variable(name: str, value: Any, tags: list[str]) -> None:
    """Create or replace the Prefect Variable `name`: an update, or a create when there is none yet.

    Safe to repeat (the whole value is written). Busy answers are retried by Prefect's client, soon in a process
    that hears busy soon (`runbook serve`, and any process with PREFECT_CLIENT_MAX_RETRIES=30).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    hear_busy_soon()
    with get_client(sync_client=True) as client:
        try:
            client.update_variable(VariableUpdate(name=name, value=value, tags=tags))
            return
        except httpx.HTTPStatusError as exc:  # the client raises it as is for a PATCH
            if exc.response.status_code != 404:
                raise
        try:
            client.create_variable(VariableCreate(name=name, value=value, tags=tags))
        except ObjectAlreadyExists:  # created by another writer meanwhile
            client.update_variable(VariableUpdate(name=name, value=value, tags=tags))


#: Prefect's client retries a busy answer this many times in a process that hears busy soon (about 50 s in all).
BUSY_RETRIES = 30


def hear_busy_soon() -> None:
    """In this process, Prefect's clients wait 0.1 s after a busy answer, doubling up to 2 s (not 2 s, 4 s, 8 s...).

    On SQLite, "database is locked" is a 503 that usually clears within milliseconds; Prefect's client sleeps
    2 s (then 4 s...) whatever happens, and that sleep was the second mode of every latency measured here
    (half the alerts took 2.5 s instead of 0.5 s). A response hook gives each busy answer a `Retry-After`
    (which Prefect's client honours) growing with the request's attempts, and the client's retries are raised
    to `BUSY_RETRIES` (PREFECT_CLIENT_MAX_RETRIES, set in the environment before Prefect is imported: see
    `runbook serve`), so its patience stays about a minute. Without that many retries it installs nothing (five
    quick retries would give up within 3 s, where Prefect's own waits last a minute). Installed once per process;
    clients made before it keep Prefect's own waits.
    """
    from prefect.client import base
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    if getattr(base, "_runbook_hears_busy_soon", False) or PREFECT_CLIENT_MAX_RETRIES.value() < BUSY_RETRIES:
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
