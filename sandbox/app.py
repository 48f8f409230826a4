"""A small local service with `/health`, whose running version the sandbox deploy switches.

`GET /version` says which commit runs (JSON `sha`, `build.sha` short; every GET answer also carries
`X-Version`); `POST /deploy` with `{"sha": ...}` is its own deploy API, for the webhook deploy target.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from sandbox.threaded import ThreadedHTTPServer


class SandboxApp(ThreadedHTTPServer):
    """An HTTP app on 127.0.0.1: healthy on good versions, answering 500 on the broken ones (`url` once started)."""

    _thread_name = "sandbox-app"

    def __init__(self, *, version: str, broken: set[str] | None = None) -> None:
        super().__init__()
        self.version = version
        self.broken = set(broken or ())
        self.deploys: list[str] = []
        self.deploy_requests: list[dict[str, Any]] = []  # the bodies POSTed to /deploy, in order
        self.version_reads = 0  # GET /version answered
        self._lock = threading.Lock()

    def deploy(self, version: str) -> None:
        """Switch the running version (what the sandbox's rollback workflow does)."""
        with self._lock:
            self.version = version
            self.deploys.append(version)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with app._lock:
                    version = app.version
                    healthy = version not in app.broken
                body: dict[str, Any]
                if self.path.split("?")[0] in ("/health", "/healthz"):
                    status, body = (
                        (200, {"status": "ok", "version": version})
                        if healthy
                        else (500, {"status": "error", "version": version, "error": "payment provider crash"})
                    )
                elif self.path == "/":
                    status, body = (200 if healthy else 500), {"service": "shop", "version": version}
                elif self.path == "/version":
                    with app._lock:
                        app.version_reads += 1
                    # What a version probe reads: the full SHA, and a short one nested as build tools write it.
                    status, body = 200, {"service": "shop", "sha": version, "build": {"sha": version[:7]}}
                else:
                    status, body = 404, {"error": "not found"}
                self._answer(status, body, version)

            def do_POST(self) -> None:
                # The app's own deploy API, for the webhook deploy target: {"sha": ...} switches the version.
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    posted = json.loads(self.rfile.read(length) or b"{}")
                    sha = posted.get("sha")
                except (ValueError, AttributeError):
                    posted, sha = {}, None
                if self.path != "/deploy" or not isinstance(sha, str) or not sha:
                    self._answer(404 if self.path != "/deploy" else 400, {"error": 'POST {"sha": ...} to /deploy'})
                    return
                with app._lock:
                    app.deploy_requests.append(posted)
                app.deploy(sha)
                self._answer(200, {"id": f"d-{len(app.deploys)}", "status": "succeeded"}, sha)

            def _answer(self, status: int, body: dict[str, Any], version: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if version:
                    self.send_header("X-Version", version)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
