"""The tests' own token server for Distribution's `auth.token` mode: RS256 JWTs with an x5c certificate.

Distribution 2.8 checks a token's `iss` against `issuer`, its `aud` against `service`, `exp`/`nbf`, the
RS256 signature, and that the `x5c` leaf certificate chains to a certificate in `rootcertbundle`. The
granted `access` entries must cover the action the request needs (pull for HEAD/GET, pull+push for an
upload, delete for DELETE).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Collection, Generator, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from runbook.registry import parse_challenge
from sandbox.threaded import ThreadedHTTPServer


def _self_signed(issuer: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA key and a self-signed certificate for it (no extensions: Go accepts it as its own root)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """`repository:name:pull,push` → (type, name, actions); the name may hold `host:port`."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (sep and sep2 and kind and name):
        return None
    return kind, name, [a for a in actions.split(",") if a]


class TokenServer(ThreadedHTTPServer):
    """A token endpoint on 127.0.0.1 issuing JWTs Distribution 2.8 accepts; use it as a context manager."""

    _thread_name = "token-server"

    def __init__(
        self,
        *,
        issuer: str = "runbook-test-issuer",
        service: str = "runbook-test-registry",
        users: Mapping[str, str] | None = None,
        public: Collection[str] = (),
        access_token_only: bool = False,
        expires_in: int = 300,
    ) -> None:
        super().__init__()
        self.issuer = issuer
        self.service = service
        self.users = dict(users or {})
        self.public = set(public)
        self.access_token_only = access_token_only
        self.expires_in = expires_in
        self._lock = threading.Lock()
        self._requests = 0
        self.refused = 0
        self._key, self._cert = _self_signed(issuer)
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self._tmp = Path(tempfile.mkdtemp(prefix="runbook-token-"))
        self.rootcertbundle = self._tmp / "root.pem"
        self.rootcertbundle.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def __repr__(self) -> str:
        realm = self.realm if self.running else "(not started)"
        return f"TokenServer(realm={realm!r}, users={sorted(self.users)!r})"

    @property
    def realm(self) -> str:
        """The URL to put in the registry's `auth.token.realm`; RuntimeError unless started."""
        return f"{self.url}/token"

    @property
    def requests(self) -> int:
        """How many token requests arrived so far."""
        with self._lock:
            return self._requests

    def stop(self) -> None:
        """Stop serving and remove the certificate directory (`rootcertbundle`): it cannot start again."""
        super().stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def close(self) -> None:
        """`stop()`."""
        self.stop()

    def grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        """Access entries for `user` (None = anonymous): users get what they ask, anonymous public pull."""
        access = []
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None or parsed[0] != "repository":
                continue
            kind, name, actions = parsed
            if user is None:
                actions = ["pull"] if "pull" in actions and name in self.public else []
            access.append({"type": kind, "name": name, "actions": actions})
        return access

    def issue(self, user: str | None, scopes: list[str]) -> str:
        """A signed RS256 JWT for these scopes."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": self.grant(user, scopes),
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"x5c": [self._x5c]})

    def _authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """(ok, user) from an Authorization header; no header = anonymous, bad credentials = not ok."""
        if not header:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False, None
        if not sep or user not in self.users or not secrets.compare_digest(self.users[user], password):
            return False, None
        return True, user

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any], headers: Mapping[str, str] = {}) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/token":
                    self._json(404, {"errors": [{"code": "NOT_FOUND", "message": "no such endpoint"}]})
                    return
                with server._lock:
                    server._requests += 1
                query = parse_qs(url.query)
                if query.get("service", [""])[0] != server.service:
                    self._json(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]})
                    return
                ok, user = server._authenticate(self.headers.get("Authorization"))
                if not ok:
                    with server._lock:
                        server.refused += 1
                    self._json(
                        401,
                        {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                        {"WWW-Authenticate": 'Basic realm="runbook-test-token"'},
                    )
                    return
                token = server.issue(user, query.get("scope", []))
                issued_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                body: dict[str, Any] = {"expires_in": server.expires_in, "issued_at": issued_at}
                body["access_token" if server.access_token_only else "token"] = token
                self._json(200, body)

        return Handler


class ChallengeAuth(httpx.Auth):
    """An httpx.Auth that answers a registry's Bearer challenge with a token (HTTP Basic at the realm).

    Used by the tests to push into a token-mode registry: the token is fetched for the scope the
    challenge names (e.g. `repository:shop:pull,push`) and reused until the registry refuses it.
    """

    requires_response_body = True

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self._basic = httpx.BasicAuth(username, password or "") if username is not None else None
        self._token: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code != 401:
            return
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None or challenge.scheme != "bearer" or "realm" not in challenge.params:
            return
        params = challenge.params
        query = {k: params[k] for k in ("service", "scope") if k in params}
        token_request = httpx.Request("GET", params["realm"], params=query)
        if self._basic is not None:
            token_request = next(self._basic.auth_flow(token_request))
        token_response = yield token_request
        if token_response.status_code != 200:
            return
        body = token_response.json()
        self._token = body.get("token") or body.get("access_token")
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request
