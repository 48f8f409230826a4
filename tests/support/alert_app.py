"""The alert endpoint's app under test: called in process (`call`, `post`), or served by uvicorn in a thread.

`TOKEN` is the alert token the tests configure; `AUTH` the header that carries it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from sandbox.threaded import HOST, ThreadedServer

TOKEN = "alert-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to `app`, in process (no socket)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://alerts.test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def post(app: FastAPI, path: str, body: Any, headers: dict[str, Any] | None = None) -> httpx.Response:
    """POST `body` as JSON to `app`, in process, with the alert token unless `headers` are given."""
    return call(app, "POST", path, json=body, headers=AUTH if headers is None else headers)


@dataclass
class Seen:
    at: float
    path: str
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    answer: dict[str, Any] = field(default_factory=dict)
    size: int = 0  # of the request body, in bytes


def _json_or_empty(data: bytes | bytearray) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:  # a body cut short (a stalled sender)
        return {}
    return value if isinstance(value, dict) else {}


class Served(ThreadedServer):
    """The app behind uvicorn on 127.0.0.1 in a thread, recording every request it answered.

    The thread runs in a copy of the starting thread's context: Prefect's settings (the test server's URL) live
    in context variables.
    """

    _thread_name = "alerts-uvicorn"
    _join_timeout = 10.0

    def __init__(self, app: FastAPI) -> None:
        super().__init__()
        self.app = app
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None

    async def _record(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_body, response_body, status = bytearray(), bytearray(), [0]

        async def recv() -> Any:
            message = await receive()
            request_body.extend(message.get("body", b""))
            return message

        async def snd(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                response_body.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, recv, snd)
        with self._lock:
            self.seen.append(
                Seen(
                    time.monotonic(),
                    scope["path"],
                    status[0],
                    _json_or_empty(request_body),
                    _json_or_empty(response_body),
                    len(request_body),
                )
            )

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    # --- ThreadedServer ---

    def _bind(self) -> int:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((HOST, 0))
        config = uvicorn.Config(self._record, interface="asgi3", log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        return int(self._sock.getsockname()[1])

    def _serve(self) -> None:
        assert self._server is not None and self._sock is not None, "_bind() first"
        self._server.run([self._sock])

    def _ready(self) -> bool:
        return self._server is not None and self._server.started

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    def _close(self) -> None:
        sock, self._sock, self._server = self._sock, None, None
        if sock is not None:
            sock.close()
