"""A deploy API for the runbook's `webhook` deploy target: copy this file, replace `deploy()`, run it.

    DEPLOY_HMAC_KEY=whsec_... python docs/examples/deploy_api.py --port 8080 --secret-env DEPLOY_HMAC_KEY

Python's standard library only. It implements the receiver's side of docs/webhook.md:

    POST /api/deploys          the runbook's signed request: verified (Standard Webhooks), then 202
                               {"id", "status": "queued"}; the same Idempotency-Key again answers 200 with
                               that same deploy and deploys nothing (one rollback id = one deploy, ever)
    GET  /api/deploys/{id}     {"id", "status": queued|running|succeeded|failed, "message"}: `status_url`
    GET  /api/services/{name}  {"service", "sha", ...} of the last deploy that succeeded here: `version_url`
    HEAD /api/deploys          200: what the runbook's dry run (preflight) checks; it never POSTs then

and the runbook's configuration for it (one deploy API per environment):

    deploy:
      type: webhook
      url: http://deploy-api:8080/api/deploys
      secret: {env: DEPLOY_HMAC_KEY}
      signature_header: null                 # this API verifies webhook-signature only
      status_url: http://deploy-api:8080/api/deploys/{id}
      version_url: http://deploy-api:8080/api/services/shop

The POST is answered at once and the deploy runs in a thread (one at a time): the runbook waits at most
`timeout_seconds` (10 s) for an answer, then follows `status_url`. Deploys are kept by Idempotency-Key in memory,
or with `--state FILE` in a JSON file, so that a restart does not forget them: a key forgotten is a key that
can deploy twice. Tested in tests/targets/test_example_deploy_api.py against the runbook's real webhook target.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

TOLERANCE_SECONDS = 5 * 60  # a timestamp further off than this is refused (Standard Webhooks)
MAX_BODY_BYTES = 64 * 1024  # the runbook's body is well under 2 KiB
DEPLOYS_PATH = "/api/deploys"
SERVICES_PATH = "/api/services/"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

Deployer = Callable[[str], None]
"""Deploys `registry/name@sha256:...` and returns once it runs; raises to report a failed deploy."""


def print_deploy(image_with_digest: str) -> None:
    """The default deploy: only says what it would deploy. Replace it (kubectl set image, nomad, ssh ...).

    Deploy exactly this reference, pinned by digest; never look the tag up again: it may have moved.
    """
    print(f"deploy {image_with_digest}", flush=True)


# --- the signature (Standard Webhooks, docs/webhook.md) ------------------------------------------


class RefusedError(Exception):
    """Not a genuine, fresh request from the runbook: answer 401 and do nothing."""


def signing_key(secret: str) -> bytes:
    """`whsec_<base64>` is the decoded bytes (Standard Webhooks); any other secret its UTF-8 bytes."""
    if not secret.startswith("whsec_"):
        return secret.encode()
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("a secret starting with whsec_ must be base64 after it") from None


class Verifier:
    """Checks each request's signature, timestamp and id; remembers the ids accepted within the tolerance."""

    def __init__(self, secret: str, tolerance: int = TOLERANCE_SECONDS) -> None:
        self._key = signing_key(secret)
        self._tolerance = tolerance
        self._seen: set[tuple[str, int]] = set()  # (webhook-id, timestamp) accepted within the tolerance
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """The request's webhook-id once it is proven genuine, fresh and not a replay; else RefusedError."""
        webhook_id = headers.get("webhook-id") or ""
        timestamp = headers.get("webhook-timestamp") or ""
        if not webhook_id or not timestamp.isdigit():
            raise RefusedError("missing webhook-id or webhook-timestamp")
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        expected = base64.b64encode(hmac.new(self._key, signed, hashlib.sha256).digest())
        # Several signatures, space-separated, while the secret is rotated: any `v1` one may match.
        offered = [s[3:].encode() for s in (headers.get("webhook-signature") or "").split() if s.startswith("v1,")]
        if not any(hmac.compare_digest(s, expected) for s in offered):
            raise RefusedError("bad signature")  # checked first: an unsigned timestamp proves nothing
        now, sent = int(time.time()), int(timestamp)
        if abs(now - sent) > self._tolerance:
            raise RefusedError("stale timestamp")  # replayed later, or a clock far off (keep both on NTP)
        with self._lock:
            self._seen = {seen for seen in self._seen if abs(now - seen[1]) <= self._tolerance}
            if (webhook_id, sent) in self._seen:
                raise RefusedError("replayed webhook-id")  # the very same request again
            self._seen.add((webhook_id, sent))
        return webhook_id

    def forget(self, headers: Mapping[str, str]) -> None:
        """The request was not acted on (answered 5xx or 429): its retry, maybe in the same second, is welcome."""
        timestamp = headers.get("webhook-timestamp") or ""
        with self._lock:
            self._seen.discard((headers.get("webhook-id") or "", int(timestamp) if timestamp.isdigit() else 0))


# --- the deploys, by Idempotency-Key ---------------------------------------------------------------


@dataclass
class Deploy:
    """One deploy, started by one rollback id (the Idempotency-Key), never by two."""

    id: str
    key: str
    service: str
    environment: str
    sha: str
    image: str
    status: str = "queued"  # then "running", then "succeeded" or "failed" (words the runbook reads)
    message: str = ""
    finished: float = 0.0

    def answer(self) -> dict[str, Any]:
        """What the POST and the status endpoint answer."""
        fields = ("id", "status", "service", "environment", "sha", "image", "message")
        return {name: getattr(self, name) for name in fields if getattr(self, name)}


def deploy_fields(body: bytes, key: str) -> dict[str, str]:
    """The fields of a deploy request, checked; ValueError saying what is wrong."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(request, dict):
        raise ValueError("the body is not a JSON object")
    names = ("service", "environment", "sha", "image", "digest", "rollback_id")
    missing = [name for name in names if not isinstance(request.get(name), str) or not request[name]]
    if missing:
        raise ValueError(f"missing or empty: {', '.join(missing)}")
    if request["rollback_id"] != key:
        raise ValueError("rollback_id differs from the Idempotency-Key")
    if not _DIGEST.fullmatch(request["digest"]) or not request["image"].endswith("@" + request["digest"]):
        raise ValueError("image must be pinned by its digest: registry/name@sha256:<64 hex>")
    return {name: request[name] for name in names}


class Deploys:
    """Every deploy by Idempotency-Key, kept for good; with a state file, across restarts too."""

    def __init__(self, state: Path | None = None) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._by_key: dict[str, Deploy] = {}
        if state is not None and state.exists():
            for saved in json.loads(state.read_text()):
                deploy = Deploy(**saved)
                if deploy.status in ("queued", "running"):
                    # Its thread died with the previous process: say so rather than pretend it goes on.
                    deploy.status, deploy.message = "failed", "the deploy API stopped during this deploy"
                self._by_key[deploy.key] = deploy

    def start(self, key: str, body: bytes) -> tuple[dict[str, Any], Deploy | None]:
        """The answer for this key, and the deploy to run when the key is new (else None: nothing to run)."""
        with self._lock:
            known = self._by_key.get(key)
            if known is not None:
                return known.answer(), None
            fields = deploy_fields(body, key)
            deploy = Deploy(
                id="d-" + uuid.uuid4().hex[:12],
                key=key,
                service=fields["service"],
                environment=fields["environment"],
                sha=fields["sha"],
                image=fields["image"],
            )
            self._by_key[key] = deploy
            try:
                self._save()
            except OSError:
                del self._by_key[key]  # not recorded, so not started: the runbook's retry may start it
                raise
            return deploy.answer(), deploy

    def update(self, deploy: Deploy, status: str, message: str = "") -> None:
        with self._lock:
            deploy.status, deploy.message = status, message
            if status in ("succeeded", "failed"):
                deploy.finished = time.time()
            try:
                self._save()
            except OSError as exc:  # the deploy went on regardless: its status is right in memory
                print(f"cannot save the state of deploy {deploy.id}: {exc}", file=sys.stderr, flush=True)

    def answer(self, deploy_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = [d for d in self._by_key.values() if d.id == deploy_id]
            return found[0].answer() if found else None

    def running(self, service: str) -> dict[str, Any] | None:
        """The last deploy of `service` that succeeded here: what runs, as far as this API knows."""
        with self._lock:
            done = [d for d in self._by_key.values() if d.service == service and d.status == "succeeded"]
            if not done:
                return None
            last = max(done, key=lambda d: d.finished)
            return {"service": service, "sha": last.sha, "image": last.image, "deploy_id": last.id}

    def all(self) -> list[Deploy]:
        with self._lock:
            return list(self._by_key.values())

    def _save(self) -> None:
        if self._state is None:
            return
        temporary = self._state.with_suffix(".tmp")
        temporary.write_text(json.dumps([asdict(d) for d in self._by_key.values()], indent=1))
        os.replace(temporary, self._state)  # whole or not at all


# --- the HTTP API ----------------------------------------------------------------------------------


class DeployApi(ThreadingHTTPServer):
    """The deploy API: verifies, keeps deploys by key, runs `deploy` in a thread, one deploy at a time."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        secret: str,
        deploy: Deployer = print_deploy,
        state: Path | None = None,
    ) -> None:
        self.verifier = Verifier(secret)  # before binding: a bad secret is an error at start
        self.deploys = Deploys(state)
        self._deploy = deploy
        self._one_at_a_time = threading.Lock()
        super().__init__(address, _Handler)

    def run(self, deploy: Deploy) -> None:
        """Deploy in the background; the status endpoint tells how it went."""
        with self._one_at_a_time:
            self.deploys.update(deploy, "running")
            try:
                self._deploy(deploy.image)
            except Exception as exc:  # whatever the deploy raised is its failure, reported to the runbook
                self.deploys.update(deploy, "failed", f"{type(exc).__name__}: {exc}"[:500])
            else:
                self.deploys.update(deploy, "succeeded")


class _Handler(BaseHTTPRequestHandler):
    server: DeployApi

    def _answer(self, status: int, body: Mapping[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(200 if self.path == DEPLOYS_PATH else 404)

    def do_POST(self) -> None:
        if self.path != DEPLOYS_PATH:
            self._answer(404, {"error": f"POST deploys to {DEPLOYS_PATH}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._answer(413, {"error": "request too large"})
            return
        body = self.rfile.read(length)  # the exact bytes signed: verify them before parsing anything
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            key = self.server.verifier.verify(headers, body)
        except RefusedError as refused:
            self._answer(401, {"error": str(refused)})  # never echo the signature back
            return
        if self.headers.get("Idempotency-Key", key) != key:
            self._answer(400, {"error": "Idempotency-Key differs from webhook-id"})
            return
        try:
            answer, started = self.server.deploys.start(key, body)
        except ValueError as exc:
            self._answer(422, {"error": str(exc)})
            return
        except OSError as exc:
            self.server.verifier.forget(headers)  # nothing was started: the runbook retries a 503
            self._answer(503, {"error": f"cannot record the deploy: {exc.strerror or type(exc).__name__}"})
            return
        if started is not None:
            # The answer was taken before the thread starts: `queued`, so the runbook follows status_url.
            threading.Thread(target=self.server.run, args=(started,), name=f"deploy-{started.id}").start()
        self._answer(202 if started is not None else 200, answer)

    def do_GET(self) -> None:
        found: dict[str, Any] | None = None
        if self.path.startswith(DEPLOYS_PATH + "/"):
            found = self.server.deploys.answer(unquote(self.path.removeprefix(DEPLOYS_PATH + "/")))
        elif self.path.startswith(SERVICES_PATH):
            found = self.server.deploys.running(unquote(self.path.removeprefix(SERVICES_PATH)))
        if found is None:
            self._answer(404, {"error": f"nothing known at {quote(self.path)}"})
        else:
            self._answer(200, found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A deploy API for the runbook's webhook deploy target.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--secret-env", default="DEPLOY_HMAC_KEY", help="variable holding the signing secret")
    parser.add_argument("--state", type=Path, help="JSON file keeping the deploys across restarts")
    args = parser.parse_args(argv)
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        print(
            f"the environment variable {args.secret_env} is not set: set it to the secret the runbook signs with "
            "(its deploy.secret), e.g. whsec_ followed by `openssl rand -base64 32`",
            file=sys.stderr,
        )
        return 2
    try:
        api = DeployApi((args.host, args.port), secret, state=args.state)
    except (ValueError, OSError) as exc:
        print(f"cannot start the deploy API: {exc}", file=sys.stderr)
        return 2
    print(f"deploy API listening on http://{args.host}:{api.server_address[1]}{DEPLOYS_PATH}", flush=True)
    try:
        api.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        api.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
