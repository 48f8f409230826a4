"""A stateful stand-in for the Slack Web API methods the runbook uses, served on 127.0.0.1.

`auth.test`, `chat.postMessage` and `chat.update`, driven by the real slack-sdk client:

    with SlackStandIn(token="xoxb-t") as slack:
        client = WebClient(token="xoxb-t", base_url=slack.base_url)
        client.chat_postMessage(channel="#incidents-prod", text="hi")

Bodies are deep copies of the recorded fixtures (`fixtures/slack/*.json`) with their values overwritten.
Errors follow Slack: HTTP 200 with `{"ok": false, "error": ...}`; 429 + Retry-After when rate limited.
Faults on demand: `set_down` (503 at once), `rate_limit_next` (429), `set_hang` (a Slack that hangs: each call
waits, then gets a 503 and changes nothing) and `latency_seconds` (a slow Slack: each call waits, then is served).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sandbox.fixtures import load_fixture
from sandbox.threaded import HOST, ThreadedHTTPServer

log = logging.getLogger(__name__)

_BOT_ID = "B0SANDBOX1"
_BOT_USER = "U0SANDBOXBOT"
_BOT_NAME = "rollback-bot"


@dataclass(frozen=True)
class SlackMessage:
    """A message as posted; `updates` (the one mutable part) collects the texts of later `chat.update`s."""

    channel_id: str
    ts: str
    text: str
    thread_ts: str | None = None
    reply_broadcast: bool = False
    updates: list[str] = field(default_factory=list)

    @property
    def current_text(self) -> str:
        """The text as it reads now (the last update, else the posted text)."""
        return self.updates[-1] if self.updates else self.text


@functools.cache
def _fixture(name: str) -> Any:
    return load_fixture("slack", name)


def _template(name: str) -> Any:
    return copy.deepcopy(_fixture(name))


def _put(obj: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Overwrite keys the template already has; a key it lacks is a bug, because it would change the shape."""
    for key, value in values.items():
        if key not in obj:
            raise KeyError(f"template has no key {key!r}")
        obj[key] = value
    return obj


def _error(code: str) -> dict[str, Any]:
    """`{"ok": false, "error": code}` with the key set of `error-channel_not_found.json`."""
    return _put(_template("error-channel_not_found.json"), ok=False, error=code)


def _flag(value: Any) -> bool:
    """Form posts carry booleans as strings ("true", "1"); JSON posts as real booleans."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, standin: SlackStandIn) -> None:
        super().__init__((HOST, 0), _Handler)
        self.standin = standin

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone before the answer (it timed out on a hanging call, on purpose) is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        self.server.standin._answer(self)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and the demo print what matters themselves."""


class SlackStandIn(ThreadedHTTPServer):
    """A local Slack workspace: channels, threads of bot messages, rate limits and outages on demand."""

    _thread_name = "slack-standin"

    def __init__(
        self,
        *,
        token: str,
        channels: dict[str, str] | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self._token = token
        # Names are kept without "#": Slack accepts "#name" and "name" alike.
        given = channels if channels is not None else {"#incidents-prod": "C0INCIDENT1"}
        self._channels = {name.lstrip("#"): channel_id for name, channel_id in given.items()}
        self._echo = echo
        self._webhook_secret = "sandboxwebhooksecret0001"
        # Called with every posted message: lets a test play the person who reads the channel and acts.
        self.on_message: Callable[[SlackMessage], object] | None = None
        self._lock = threading.Lock()
        self._messages: list[SlackMessage] = []
        self._counts: Counter[str] = Counter()
        self._down = False
        self._rate_limited = 0
        self._retry_after = 1
        self._last_us = 0
        self._hang: float | None = None
        # Every call (API and webhook) waits this long, then is served as usual: a slow Slack.
        self.latency_seconds = 0.0

    # --- lifecycle (start, stop, the context manager: ThreadedHTTPServer) ---

    def _make_server(self) -> _Server:
        return _Server(self)

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>/api/`, what `WebClient(base_url=...)` expects (it appends the method).

        RuntimeError unless started.
        """
        return f"{self.url}/api/"

    # --- modes ---

    def set_down(self, down: bool) -> None:
        """While down, every request gets a plain-text HTTP 503."""
        with self._lock:
            self._down = down

    def set_hang(self, seconds: float | None) -> None:
        """Every call (API and webhook) waits `seconds` before answering, so that a client with a shorter timeout
        gives up; the answer, if anyone still reads it, is a plain-text 503 and nothing is posted or updated (counted
        in `requests` all the same). None: answer at once again (calls already waiting finish their wait).
        """
        with self._lock:
            self._hang = seconds

    def rate_limit_next(self, n: int, retry_after: int = 1) -> None:
        """Answer the next `n` requests with 429, `Retry-After: retry_after` and `error: ratelimited`."""
        with self._lock:
            self._rate_limited, self._retry_after = n, retry_after

    # --- introspection ---

    @property
    def messages(self) -> list[SlackMessage]:
        """Every posted message, oldest first (a copy of the list; `updates` lists are live)."""
        with self._lock:
            return list(self._messages)

    def thread(self, root_ts: str) -> list[SlackMessage]:
        """The root message with this ts followed by its replies, in posting order."""
        return [m for m in self.messages if root_ts in (m.ts, m.thread_ts)]

    @property
    def requests(self) -> dict[str, int]:
        """How many requests each API method received (any outcome, including 429 and 503)."""
        with self._lock:
            return dict(self._counts)

    # --- HTTP plumbing ---

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer one request: read it, dispatch it, echo what changed, write the response."""
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        split = urlsplit(handler.path)
        method = split.path.removeprefix("/api/").strip("/")
        args: dict[str, Any] = dict(parse_qsl(split.query))
        content_type = handler.headers.get("Content-Type") or ""
        lines: list[str] = []
        try:
            if "json" in content_type and raw:
                args.update(json.loads(raw))
            elif raw:
                args.update(parse_qsl(raw.decode("utf-8")))
            if self._hung(method, split.path):
                status, headers, body = 503, {"Content-Type": "text/plain; charset=utf-8"}, b"Service Unavailable"
            elif split.path.startswith("/services/"):
                status, headers, body = self._incoming_webhook(split.path, args, lines)
            else:
                status, headers, body = self._respond(method, handler.headers.get("Authorization") or "", args, lines)
        except ValueError:
            # Undecodable JSON or form data (JSONDecodeError and UnicodeDecodeError are ValueErrors).
            status, headers, body = 200, {}, json.dumps(_error("invalid_form_data")).encode()
        except Exception:
            # A bug in the stand-in must surface as a clear 500, not as a dropped connection.
            log.exception("SlackStandIn failed on %s", handler.path)
            status, headers, body = 500, {"Content-Type": "text/plain; charset=utf-8"}, b"internal error"
        # Echo before answering, so the lines are out by the time the client's call returns.
        if self._echo is not None:
            for line in lines:
                try:
                    self._echo(line)
                except Exception:
                    # A broken printer must not turn a posted message into a failed API call.
                    log.exception("SlackStandIn echo failed")
        handler.send_response(status)
        for name, value in {"Content-Type": "application/json; charset=utf-8", **headers}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _hung(self, method: str, path: str) -> bool:
        """Wait as the faults say (hang, else latency); whether the call hung (then it is counted, not served)."""
        with self._lock:
            hang, latency = self._hang, self.latency_seconds
            if hang is not None:
                self._counts["incoming-webhook" if path.startswith("/services/") else method] += 1
        time.sleep(hang if hang is not None else latency)
        return hang is not None

    def _respond(
        self, method: str, authorization: str, args: dict[str, Any], lines: list[str]
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self._counts[method] += 1
            if self._down:
                return 503, {"Content-Type": "text/plain; charset=utf-8"}, b"Service Unavailable"
            if self._rate_limited > 0:
                self._rate_limited -= 1
                recorded = _template("ratelimited-429.http.json")
                headers = {**recorded["headers"], "Retry-After": str(self._retry_after)}
                return recorded["status"], headers, json.dumps(recorded["body"]).encode()
            scheme, _, credential = authorization.partition(" ")
            token = credential.strip() if scheme.lower() == "bearer" else args.get("token")
            if not token:
                result = _error("not_authed")
            elif token != self._token:
                result = _error("invalid_auth")
            elif method == "auth.test":
                result = self._auth_test()
            elif method == "chat.postMessage":
                result = self._post_message(args, lines)
            elif method == "chat.update":
                result = self._update(args, lines)
            else:
                result = _error("unknown_method")
            return 200, {}, json.dumps(result).encode()

    # --- incoming webhook (no token, no thread: plain-text answers, errors by status) ---

    @property
    def webhook_url(self) -> str:
        """The incoming-webhook URL of the first channel; its last part is the secret."""
        return self.base_url.removesuffix("api/") + f"services/T0SANDBOX1/B0SANDBOX1/{self._webhook_secret}"

    def _incoming_webhook(self, path: str, args: dict[str, Any], lines: list[str]) -> tuple[int, dict[str, str], bytes]:
        plain = {"Content-Type": "text/plain; charset=utf-8"}
        with self._lock:
            self._counts["incoming-webhook"] += 1
            if self._down:
                return 500, plain, b"rollup_error"
            if self._rate_limited > 0:
                self._rate_limited -= 1
                return 429, {**plain, "Retry-After": str(self._retry_after)}, b"rate_limited"
            if path != f"/services/T0SANDBOX1/B0SANDBOX1/{self._webhook_secret}":
                return 404, plain, b"no_service"
            text = self._text(args)
            if text is None:
                return 400, plain, b"invalid_payload"
            channel_id = next(iter(self._channels.values()))
            message = SlackMessage(channel_id, self._next_ts(), text, None, False)
            self._messages.append(message)
            lines.append(f"[{self._channel_name(channel_id)}] (webhook) {_one_line(text)}")
        if self.on_message is not None:
            self.on_message(message)
        return 200, plain, b"ok"

    # --- methods ---

    def _auth_test(self) -> dict[str, Any]:
        # No recorded fixture exists for auth.test; this is the documented bot-token answer.
        return {
            "ok": True,
            "url": "https://sandbox.slack.invalid/",
            "team": "Sandbox",
            "user": _BOT_NAME,
            "team_id": "T0SANDBOX1",
            "user_id": _BOT_USER,
            "bot_id": _BOT_ID,
            "is_enterprise_install": False,
        }

    def _channel_id(self, channel: Any) -> str | None:
        name = str(channel or "")
        if name in self._channels.values():
            return name
        return self._channels.get(name.lstrip("#"))

    def _channel_name(self, channel_id: str) -> str:
        for name, known in self._channels.items():
            if known == channel_id:
                return f"#{name}"
        return channel_id

    def _next_ts(self) -> str:
        """A unique, increasing "seconds.micros" string near the wall clock (Slack ts are strings)."""
        self._last_us = max(time.time_ns() // 1000, self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    @staticmethod
    def _text(args: dict[str, Any]) -> str | None:
        """The message text, or None when there is neither text nor blocks (Slack's `no_text`)."""
        text = str(args.get("text") or "")
        if text.strip():
            return text
        return "(blocks)" if args.get("blocks") or args.get("attachments") else None

    def _post_message(self, args: dict[str, Any], lines: list[str]) -> dict[str, Any]:
        channel_id = self._channel_id(args.get("channel"))
        if channel_id is None:
            return _error("channel_not_found")
        text = self._text(args)
        if text is None:
            return _error("no_text")
        thread_ts = str(args["thread_ts"]) if args.get("thread_ts") else None
        broadcast = thread_ts is not None and _flag(args.get("reply_broadcast"))
        message = SlackMessage(channel_id, self._next_ts(), text, thread_ts, broadcast)
        self._messages.append(message)
        if self.on_message is not None:
            self.on_message(message)
        if thread_ts is None:
            lines.append(f"[{self._channel_name(channel_id)}] {_one_line(text)}")
        else:
            also = " (also sent to the channel)" if broadcast else ""
            lines.append(f"  └ {_one_line(text)}{also}")
        body = _template("chat.postMessage.ok.json")
        _put(
            body["message"],
            attachments=[],
            bot_id=_BOT_ID,
            subtype="bot_message",
            text=text,
            ts=message.ts,
            type="message",
            username=_BOT_NAME,
        )
        return _put(body, ok=True, channel=channel_id, ts=message.ts)

    def _update(self, args: dict[str, Any], lines: list[str]) -> dict[str, Any]:
        channel_id = self._channel_id(args.get("channel"))
        if channel_id is None:
            return _error("channel_not_found")
        ts = str(args.get("ts") or "")
        found = [m for m in self._messages if m.channel_id == channel_id and m.ts == ts]
        if not found:
            return _error("message_not_found")
        text = self._text(args)
        if text is None:
            return _error("no_text")
        found[0].updates.append(text)
        lines.append(f"  ↻ updated: {_one_line(text)}")
        body = _template("chat.update.ok.json")
        _put(body["message"], text=text, user=_BOT_USER)
        return _put(body, ok=True, channel=channel_id, ts=ts, text=text)
