"""A small instrumented service for the metric and smoke checks: Prometheus metrics, traffic, user paths.

`MetricsApp` serves on 127.0.0.1 (a free port, once started):

- `/`: the page whose answers are counted in `http_requests_total{code="..."}`: 200, or 500 while `failing`;
- `/metrics`: those counters in the Prometheus text format. As with most client libraries, a code's series
  appears with its first request, so a service that never failed has no `code="500"` series;
- `/api/cart`: GET answers `{"data": {"items": [{"id": 1}]}}`; POST a JSON body, answered 201 with
  `{"data": {"added": <body>}}`;
- `/login`: an HTML page containing `Sign in`;
  the user paths answer 500 while `failing` too (they are not counted in the metric).

A background thread (`traffic_per_second`, daemon, stopped by `stop()`) requests `/` steadily, so the 5xx
ratio is defined and follows `failing` within one rate() window.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any, Self

from sandbox.threaded import ThreadedHTTPServer

CART = {"data": {"items": [{"id": 1}]}}
LOGIN_PAGE = "<!doctype html><html><head><title>Shop</title></head><body><h1>Sign in</h1></body></html>"


class MetricsApp(ThreadedHTTPServer):
    """An HTTP app on 127.0.0.1 exposing request counters, with a switch that makes it answer 500."""

    _thread_name = "metrics-app"

    def __init__(self, *, failing: bool = False, traffic_per_second: float = 20.0) -> None:
        if not 0 <= traffic_per_second <= 100:
            raise ValueError("traffic_per_second must be between 0 (no traffic) and 100")
        super().__init__()
        self._failing = failing
        self.traffic_per_second = traffic_per_second
        self.requests: Counter[str] = Counter()  # answers to `/` by status code, as in /metrics
        self.hits: Counter[str] = Counter()  # requests by path, /metrics and / included
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._traffic: threading.Thread | None = None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(*app._route("GET", self.path, b""))

            def do_HEAD(self) -> None:
                self._answer(*app._route("HEAD", self.path, b""), head=True)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._answer(*app._route("POST", self.path, self.rfile.read(length)))

            def _answer(self, status: int, content_type: str, body: bytes, head: bool = False) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    @property
    def target(self) -> str:
        """`127.0.0.1:PORT`, the scrape target."""
        return f"127.0.0.1:{self.port}"

    @property
    def failing(self) -> bool:
        with self._lock:
            return self._failing

    @failing.setter
    def failing(self, value: bool) -> None:
        with self._lock:
            self._failing = value

    def metrics_text(self) -> str:
        """The /metrics body."""
        with self._lock:
            counts = sorted(self.requests.items())
        lines = [
            "# HELP http_requests_total Requests to / answered, by HTTP status code.",
            "# TYPE http_requests_total counter",
            *(f'http_requests_total{{code="{code}"}} {count}' for code, count in counts),
        ]
        return "\n".join(lines) + "\n"

    def _route(self, method: str, raw_path: str, body: bytes) -> tuple[int, str, bytes]:
        path = raw_path.split("?")[0]
        with self._lock:
            self.hits[path] += 1
            failing = self._failing
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics_text().encode()
        if path == "/":
            status = 500 if failing else 200
            with self._lock:
                self.requests[str(status)] += 1
            return _json(status, {"service": "shop", "error": "payment provider crash"} if failing else {"ok": True})
        if path in ("/api/cart", "/login") and failing:
            return _json(500, {"error": "payment provider crash"})
        if path == "/api/cart" and method == "POST":
            try:
                added = json.loads(body or b"null")
            except ValueError:
                return _json(400, {"error": "the body must be JSON"})
            return _json(201, {"data": {"added": added}})
        if path == "/api/cart":
            return _json(200, CART)
        if path == "/login":
            return 200, "text/html; charset=utf-8", LOGIN_PAGE.encode()
        return _json(404, {"error": "not found"})

    def _generate_traffic(self) -> None:
        pause = 1.0 / self.traffic_per_second
        while not self._stopping.wait(pause):
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                connection.request("GET", "/")
                connection.getresponse().read()
            except OSError:
                pass  # stopping, or a busy moment: the next request comes soon
            finally:
                connection.close()

    def start(self) -> Self:
        """Serve (`url`, `port`, `target`) and, with `traffic_per_second`, request `/` steadily; returns self."""
        if self.running:
            return self
        super().start()
        self._stopping.clear()
        if self.traffic_per_second > 0:
            self._traffic = threading.Thread(target=self._generate_traffic, name="metrics-app-traffic", daemon=True)
            self._traffic.start()
        return self

    def stop(self) -> None:
        """Stop the traffic, then the server; safe to call twice."""
        self._stopping.set()
        traffic, self._traffic = self._traffic, None
        if traffic is not None:
            traffic.join(timeout=5)
        super().stop()


def _json(status: int, body: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()
