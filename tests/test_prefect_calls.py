"""`runbook.prefect_calls`: a Prefect API answering "busy" is heard again soon, not after Prefect's 2 s, 4 s, 8 s.

Prefect's own client sleeps 2 s after a 503 even with its retries turned off; on SQLite ("database is locked")
that was seconds before a deploy (the slot's holder) or at a run's end (the hold, the ready target). The tests'
conftest installs `hear_busy_soon` with PREFECT_CLIENT_MAX_RETRIES=30, as `runbook serve` does.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import prefect
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from runbook.prefect_calls import hear_busy_soon, put_variable
from sandbox.threaded import ThreadedHTTPServer

NAME = "ready-target-shop-production"


class BusyApi(ThreadedHTTPServer):
    """The Variables of a Prefect API, answering `busy` times with `status` (503: SQLite's lock) first."""

    def __init__(self, busy: int, status: int = 503) -> None:
        super().__init__()
        self.busy, self.status = busy, status
        self.calls: list[str] = []  # the methods of the Variable calls, in order
        self.variables: dict[str, Any] = {}

    def _answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.calls.append(method)
        if len(self.calls) <= self.busy:
            return self.status, {"detail": "database is locked"}
        name = path.rsplit("/", 1)[-1]
        if method == "GET":
            return (200, self._variable(name)) if name in self.variables else (404, {"detail": "not found"})
        if method == "PATCH":
            if name not in self.variables:
                return 404, {"detail": "Variable not found"}
            self.variables[name] = body["value"]
            return 204, None
        self.variables[body["name"]] = body["value"]
        return 201, self._variable(body["name"])

    def _variable(self, name: str) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        value = self.variables[name]
        return {"id": str(uuid.uuid4()), "created": now, "updated": now, "name": name, "value": value, "tags": []}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                if "/csrf-token" in self.path:  # an older server: Prefect's client then sends no CSRF token
                    status, reply = 404, {"detail": "Not Found"}
                elif self.path.endswith("/admin/version"):
                    status, reply = 200, prefect.__version__
                else:
                    status, reply = api._answer(self.command, self.path, body)
                data = b"" if reply is None else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _put(api: BusyApi) -> float:
    with temporary_settings({PREFECT_API_URL: f"{api.url}/api"}):
        started = time.monotonic()
        put_variable(NAME, {"sha": "abc"}, ["runbook"])
        return time.monotonic() - started


def test_a_busy_answer_is_tried_again_soon_then_the_variable_is_created() -> None:
    with BusyApi(busy=3) as api:
        elapsed = _put(api)
    assert api.variables == {NAME: {"sha": "abc"}}
    assert api.calls == ["PATCH", "PATCH", "PATCH", "PATCH", "POST"]  # 3 busy, then not there yet: created
    assert elapsed < 1.5  # 0.1 + 0.2 + 0.4 s of waits, where Prefect's client alone sleeps 2 s, 4 s, 8 s


def test_an_existing_variable_is_replaced_in_one_call_and_a_refusal_is_not_retried() -> None:
    with BusyApi(busy=0) as api:
        api.variables[NAME] = {"sha": "old"}
        _put(api)
    assert api.calls == ["PATCH"] and api.variables == {NAME: {"sha": "abc"}}
    with BusyApi(busy=1, status=422) as api, pytest.raises(httpx.HTTPStatusError, match="422"):
        _put(api)
    assert api.calls == ["PATCH"]


def test_prefect_clients_made_after_hear_busy_soon_wait_a_tenth_of_a_second_not_two() -> None:
    hear_busy_soon()  # idempotent (the tests' conftest installs it, as `runbook serve` does)
    with (
        BusyApi(busy=3) as api,
        temporary_settings({PREFECT_API_URL: f"{api.url}/api"}),
        get_client(sync_client=True) as client,
    ):
        started = time.monotonic()
        assert client.read_variable_by_name(NAME) is None  # the 404 after 3 busy answers
        elapsed = time.monotonic() - started
    assert api.calls == ["GET"] * 4  # Prefect's own retries, 3 of them
    assert elapsed < 1.5  # 0.1 + 0.2 + 0.4 s, where Prefect alone sleeps 2 s, 4 s, 8 s
