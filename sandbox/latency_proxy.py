"""A delaying HTTP reverse proxy on 127.0.0.1, for putting a slow network in front of a real local server.

The benchmarks point the runbook at it instead of the sandbox registry (a real Distribution registry, which has
no latency knob of its own):

    with LatencyProxy(registry.base_url, latency_seconds=0.08) as proxy:
        ...  # the configuration's registry host is `proxy.host`
        proxy.requests  # every request received, with when it arrived

Every request waits `latency_seconds` (changeable while serving), then is forwarded with httpx as it came (method,
path and query, headers including `Host`, so the upstream's own `Location` URLs point back at the proxy; body) and
answered with the upstream's status, headers and raw body. An upstream that cannot be reached is a 502.
Request bodies must carry a `Content-Length` (no chunked uploads).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

from sandbox.threaded import ThreadedHTTPServer

# Headers of one connection, not of the message (RFC 9110 7.6.1): never forwarded either way.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy received: method, path (with query), when it arrived (time.time()), the answer."""

    method: str
    path: str
    received: float
    status: int = 0


class LatencyProxy(ThreadedHTTPServer):
    """Forwards every request to `upstream` after `latency_seconds`, counting them (`requests`, `count`)."""

    _thread_name = "latency-proxy"

    def __init__(self, upstream: str, *, latency_seconds: float = 0.0, timeout: float = 30.0) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.latency_seconds = latency_seconds  # public: a benchmark changes it between scenarios
        self._timeout = timeout
        self._lock = threading.Lock()
        self._requests: list[ProxiedRequest] = []
        self._client: httpx.Client | None = None

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`, as a registry host is written in an image reference; RuntimeError unless started."""
        return f"127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[ProxiedRequest]:
        """Every request received so far (answered or not yet), oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def count(self) -> int:
        """How many requests it received so far."""
        with self._lock:
            return len(self._requests)

    def received_before(self, moment: float) -> int:
        """How many requests arrived before `moment` (a time.time() value)."""
        return sum(1 for r in self.requests if r.received < moment)

    # --- lifecycle: one httpx client (a connection pool) while serving ---

    def _bind(self) -> int:
        self._client = httpx.Client(timeout=self._timeout, follow_redirects=False)
        return super()._bind()

    def _close(self) -> None:
        super()._close()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- forwarding ---

    def _record(self, method: str, path: str) -> int:
        """Note an arrival; its index, for the answer's status."""
        with self._lock:
            self._requests.append(ProxiedRequest(method, path, time.time()))
            return len(self._requests) - 1

    def _answered(self, index: int, status: int) -> None:
        with self._lock:
            request = self._requests[index]
            self._requests[index] = ProxiedRequest(request.method, request.path, request.received, status)

    def _forward(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> _Answer:
        """The upstream's answer to one request, or a 502 naming why there was none."""
        client = self._client
        if client is None:
            return _Answer(503, [("Content-Type", "text/plain")], b"proxy stopped")
        forwarded = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"]
        try:
            request = client.build_request(method, self.upstream + path, headers=forwarded, content=body or None)
            response = client.send(request, stream=True)
            try:
                raw = b"".join(response.iter_raw())
            finally:
                response.close()
        except httpx.HTTPError as exc:
            return _Answer(502, [("Content-Type", "text/plain")], f"upstream: {type(exc).__name__}".encode())
        kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
        return _Answer(response.status_code, kept, raw)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        index = self._record(method, handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        latency = self.latency_seconds
        if latency > 0:
            time.sleep(latency)
        answer = self._forward(method, handler.path, list(handler.headers.items()), body)
        self._answered(index, answer.status)
        handler.send_response(answer.status)
        for name, value in answer.headers:
            # A HEAD answer keeps the upstream's Content-Length (the size of what a GET would return).
            if name.lower() != "content-length" or method == "HEAD":
                handler.send_header(name, value)
        if method != "HEAD":
            handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        if method != "HEAD" and answer.body:
            handler.wfile.write(answer.body)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the clients it stands between expect

            def _serve(self) -> None:
                proxy._answer(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                """Stay quiet: the benchmarks print what matters themselves."""

        return Handler


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
