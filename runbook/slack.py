"""The Slack client: post, reply in a thread, update a message, check the token. Failures are values, never raised.

With a bot token (slack-sdk `WebClient`): the root message can be updated (`chat.update`) and replied to in its
thread. With only an incoming webhook: plain messages in the webhook's channel, no thread and no updates. Each
call comes back as a `Posted` (where it went, or why it did not); the caller decides what a failure means (for a
rollback: a warning, never a stop). The token and the webhook URL are secrets: never in a message or log line.

A call given a `Deadline` (`until=`) keeps trying what Slack did not take for a passing reason (connection
errors, timeouts, HTTP 5xx, rate limits), pausing 0.5 s doubling to 5 s, until the deadline says to give up;
a refusal that would not change (invalid_auth, channel_not_found, not_in_channel...) is never tried again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from http.client import HTTPException
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from runbook.config import SlackSettings
from runbook.errors import RunbookError

WEBHOOK = "incoming-webhook"
FIRST_PAUSE_SECONDS = 0.5  # between two attempts of one message, doubling up to LONGEST_PAUSE_SECONDS
LONGEST_PAUSE_SECONDS = 5.0
# Slack's own words for trouble on its side (HTTP 200, "ok": false): worth another try, unlike any other code.
_PASSING_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"})


@dataclass(frozen=True)
class Posted:
    """The outcome of one Slack post: where it went, or why it did not."""

    channel: str | None
    ts: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def threaded(self) -> bool:
        """Whether replies and updates can refer to it (a Web API message, not a webhook post)."""
        return self.ok and self.ts is not None and self.channel not in (None, WEBHOOK)


log = logging.getLogger("runbook.slack")


class Deadline:
    """Until when a message is tried again: open-ended until `give_up_at` (or `stop`), shared by one run's posts."""

    def __init__(self) -> None:
        self._stopped = threading.Event()
        self._at: float | None = None  # time.monotonic()

    def give_up_at(self, at: float) -> None:
        """No attempt starts after `at` (a `time.monotonic()` value); an earlier one given before stays."""
        self._at = at if self._at is None else min(self._at, at)

    def stop(self) -> None:
        """Give up now: no further attempt, and a pause in progress ends."""
        self._stopped.set()

    @property
    def over(self) -> bool:
        return self._stopped.is_set() or (self._at is not None and time.monotonic() >= self._at)

    def pause(self, seconds: float) -> bool:
        """Wait `seconds` (less when the deadline comes first, or on `stop`); whether to try again."""
        if self._at is not None:
            seconds = min(seconds, max(0.0, self._at - time.monotonic()))
        self._stopped.wait(seconds)
        return not self.over


class _SaysRetries:
    """Logs each retry on `runbook.slack` (slack-sdk itself only says so at DEBUG), for the post-mortem."""

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        why = f"HTTP {response.status_code}" if response is not None else type(error).__name__
        log.info("%s: retry %d of the %s call", why, state.current_attempt + 1, request.url.rsplit("/", 1)[-1])
        super().prepare_for_next_attempt(  # type: ignore[misc]
            state=state, request=request, response=response, error=error
        )


class _RateLimitRetries(_SaysRetries, RateLimitErrorRetryHandler):
    """429: wait for Retry-After, then retry (slack-sdk does not by default)."""


class _ConnectionRetries(_SaysRetries, ConnectionErrorRetryHandler):
    """A dropped connection: retry once."""


def _retries() -> list[RetryHandler]:
    # Never the webhook's URL in a log line: it is a secret; `request.url` is only read for its last part.
    return [_ConnectionRetries(max_retry_count=1), _RateLimitRetries(max_retry_count=2)]


def _timeout(settings: SlackSettings) -> int:
    # slack-sdk takes whole seconds; int() would turn 0.5 into 0, which urllib takes as "never wait".
    return max(1, math.ceil(settings.timeout_seconds))


def _web_client(settings: SlackSettings) -> WebClient:
    """A slack-sdk Web API client (bot token)."""
    if settings.token is None:
        raise RunbookError("no Slack bot token is configured", hint="set slack.token in the configuration")
    return WebClient(
        token=settings.token.reveal().get_secret_value(),
        base_url=settings.base_url,
        timeout=_timeout(settings),
        retry_handlers=_retries(),
    )


def _api_error(exc: SlackApiError, what: str) -> str:
    # The error code only ("invalid_auth", "ratelimited"): never the request, which holds the token.
    status = exc.response.status_code
    return f"Slack refused {what}: {exc.response.get('error') if status == 200 else f'HTTP {status}'}"


def _passing(exc: SlackApiError) -> bool:
    """Whether Slack's refusal may go away (5xx, 429, its own trouble), unlike a bad token or channel."""
    status = exc.response.status_code
    return status == 429 or status >= 500 or (status == 200 and exc.response.get("error") in _PASSING_ERRORS)


@dataclass(frozen=True)
class _Try:
    """One attempt: Slack's answer, or why not and whether trying again may help."""

    answer: Any = None
    error: str | None = None
    passing: bool = False


def _attempt(call: Callable[[], Any], what: str) -> _Try:
    """The call's answer, or why it failed: Slack trouble is a value, never an exception."""
    try:
        return _Try(call())
    except SlackApiError as exc:
        return _Try(error=_api_error(exc, what), passing=_passing(exc))
    except (OSError, HTTPException) as exc:  # timeouts, refused or dropped connections
        return _Try(error=f"Slack unreachable: {type(exc).__name__}", passing=True)
    except SlackClientError as exc:  # a request slack-sdk would not send: the same next time
        return _Try(error=f"Slack unreachable: {type(exc).__name__}")
    except RunbookError as exc:
        return _Try(error=str(exc))


def _persisting(call: Callable[[], _Try], until: Deadline | None, what: str) -> _Try:
    """`call` once, or (with `until`) again after each passing failure, pausing longer each time, until it says."""
    pause = FIRST_PAUSE_SECONDS
    attempt = 1
    while True:
        tried = call()
        if tried.error is None or not tried.passing or until is None:
            return tried
        log.info("%s: retry %d of %s in %.1f s", tried.error, attempt, what, pause)
        if not until.pause(pause):
            return tried
        pause, attempt = min(pause * 2, LONGEST_PAUSE_SECONDS), attempt + 1


def _posted(tried: _Try) -> Posted:
    if tried.error is not None:
        return Posted(None, None, tried.error)
    if isinstance(tried.answer, Posted):
        return tried.answer
    return Posted(str(tried.answer["channel"]), str(tried.answer["ts"]))


class SlackPoster:
    """Posts to one channel with the configured Slack (bot token, or only an incoming webhook); one client per run."""

    def __init__(self, settings: SlackSettings, channel: str) -> None:
        self.settings = settings
        self.channel = channel

    @property
    def webhook_only(self) -> bool:
        return self.settings.token is None and self.settings.webhook_url is not None

    @cached_property
    def _client(self) -> WebClient:
        return _web_client(self.settings)

    def post(
        self,
        text: str,
        thread: Posted | None = None,
        *,
        broadcast: bool = False,
        channel: str | None = None,
        until: Deadline | None = None,
    ) -> Posted:
        """Post one message (a reply when `thread` is given); failures come back as a `Posted` with an error.

        `until`: try again after a passing failure until that deadline (otherwise: one attempt).
        """
        if self.webhook_only:
            return _posted(_persisting(lambda: self._via_webhook(text), until, "the message"))
        kwargs: dict[str, Any] = {"channel": channel or self.channel, "text": text, "unfurl_links": False}
        if thread is not None and thread.threaded:
            kwargs["channel"] = channel or str(thread.channel)  # a reply goes where its root is (an incident's)
            kwargs["thread_ts"] = thread.ts
            kwargs["reply_broadcast"] = broadcast
        call = lambda: _attempt(lambda: self._client.chat_postMessage(**kwargs), "the message")  # noqa: E731
        return _posted(_persisting(call, until, "the message"))

    def update(self, message: Posted, text: str, *, until: Deadline | None = None) -> Posted:
        """Rewrite a posted message in place (the incident's root, with the current status)."""
        if not message.threaded:
            return Posted(None, None, "no message to update (webhook mode, or the root was not posted)")
        channel, ts = str(message.channel), str(message.ts)
        call = lambda: _attempt(lambda: self._client.chat_update(channel=channel, ts=ts, text=text), "the update")  # noqa: E731
        return _posted(_persisting(call, until, "the update"))

    def check(self) -> str | None:
        """Check, without posting, that Slack would accept messages (auth.test); the problem, or None."""
        if self.webhook_only:
            assert self.settings.webhook_url is not None
            # An incoming webhook cannot be tested without posting.
            return _attempt(self.settings.webhook_url.reveal, "the webhook").error
        return _attempt(lambda: self._client.auth_test(), "the token").error

    def _via_webhook(self, text: str) -> _Try:
        def send() -> Any:
            assert self.settings.webhook_url is not None
            client = WebhookClient(
                self.settings.webhook_url.reveal().get_secret_value(),
                timeout=_timeout(self.settings),
                retry_handlers=_retries(),
            )
            return client.send(text=text, unfurl_links=False)

        tried = _attempt(send, "the message")
        if tried.error is not None:
            return tried
        status = tried.answer.status_code
        if status != 200:
            # Plain-text error codes (channel_not_found, no_service...): safe to show, unlike the URL.
            error = f"Slack webhook refused the message: HTTP {status} {tried.answer.body}"
            return _Try(error=error, passing=status == 429 or status >= 500)
        return _Try(Posted(WEBHOOK, None))
