"""`runbook.prefect_calls.put_variable`: a write the Prefect API answers "busy" is tried again soon.

Prefect's own client sleeps 2 s after a 503 even with its retries turned off; on SQLite ("database is locked")
that was seconds before a deploy (the slot's holder) or at a run's end (the hold, the ready target).
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from runbook.prefect_calls import put_variable
from sandbox.threaded import ThreadedHTTPServer


class BusyApi(ThreadedHTTPServer):
    """The Variables of a Prefect API, answering `busy` times with `status` (503: SQLite's lock) first."""

    def __init__(self, busy: int, status: int = 503) -> None:
        super().__init__()
        self.busy, self.status = busy, status
        self.calls: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.variables: dict[str, Any] = {}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                self._serve(lambda body: (204, None) if body["name"] in api.variables else (404, {}))

            def do_POST(self) -> None:
                self._serve(lambda body: (201, body))

            def do_GET(self) -> None:  # reading a Variable: none here
                self._serve(lambda body: (404, {"detail": "Variable not found"}))

            def _serve(self, answer: Any) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                api.calls.append((self.command, self.path, self.headers.get("Authorization")))
                if len(api.calls) <= api.busy:
                    status, reply = api.status, {"detail": "database is locked"}
                else:
                    status, reply = answer(body)
                    if status in (201, 204):
                        api.variables[body["name"]] = body["value"]
                data = b"" if reply is None else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _put(api: BusyApi, within: float = 20.0) -> None:
    settings = {PREFECT_API_URL: f"{api.url}/api", PREFECT_API_AUTH_STRING: "runbook:s3cret"}
    with temporary_settings(settings):
        put_variable("ready-target-shop-production", {"sha": "abc"}, ["runbook"], within=within)


def test_a_busy_answer_is_tried_again_soon_then_the_variable_is_created() -> None:
    with BusyApi(busy=3) as api:
        started = time.monotonic()
        _put(api)
        elapsed = time.monotonic() - started
    assert api.variables == {"ready-target-shop-production": {"sha": "abc"}}
    methods = [method for method, _, _ in api.calls]
    assert methods == ["PATCH", "PATCH", "PATCH", "PATCH", "POST"]  # 3 busy, then not there yet: created
    assert {auth for _, _, auth in api.calls} == {"Basic cnVuYm9vazpzM2NyZXQ="}  # the auth string, as Prefect's
    assert elapsed < 2  # pauses of 0.05, 0.1, 0.2 s, where Prefect's client sleeps 2 s after each 503


def test_it_gives_up_at_its_deadline_and_never_retries_a_refusal() -> None:
    with BusyApi(busy=1000) as api, pytest.raises(httpx.HTTPStatusError, match="503"):
        _put(api, within=0.5)
    with BusyApi(busy=1, status=422) as api, pytest.raises(httpx.HTTPStatusError, match="422"):
        _put(api)
    assert len(api.calls) == 1


def test_the_launchers_client_hears_busy_at_once() -> None:
    """Prefect's async client, its retries off, with `BusyAtOnce`: a 503 comes back without Prefect's 2 s sleep."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    from runbook.prefect_calls import BusyAtOnce

    async def read(api: BusyApi) -> float:
        settings = {PREFECT_API_URL: f"{api.url}/api", PREFECT_CLIENT_MAX_RETRIES: 0}
        with temporary_settings(settings):
            async with get_client(httpx_settings={"transport": BusyAtOnce()}) as client:
                started = time.monotonic()
                with pytest.raises(PrefectHTTPStatusError, match="503"):
                    await client.read_variable_by_name("ready-target-shop-production")
                return time.monotonic() - started

    with BusyApi(busy=1) as api:
        assert asyncio.run(read(api)) < 1  # Prefect's own wait after a 503 is 2 s (jittered)
    assert [method for method, _, _ in api.calls] == ["GET"]


def test_prefect_clients_made_after_hear_busy_soon_wait_a_tenth_of_a_second_not_two() -> None:
    from prefect.client.orchestration import get_client

    from runbook.prefect_calls import hear_busy_soon

    hear_busy_soon()  # idempotent (the tests' conftest installs it, as `runbook serve` does)
    with (
        BusyApi(busy=3) as api,
        temporary_settings({PREFECT_API_URL: f"{api.url}/api"}),
        get_client(sync_client=True) as client,
    ):
        started = time.monotonic()
        assert client.read_variable_by_name("ready-target-shop-production") is None  # the 404 after 3 busy
        elapsed = time.monotonic() - started
    assert [method for method, _, _ in api.calls] == ["GET"] * 4  # Prefect's own retries, 3 of them
    assert elapsed < 1.5  # 0.1 + 0.2 + 0.4 s, where Prefect alone sleeps 2 s, 4 s, 8 s
